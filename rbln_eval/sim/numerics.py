"""The same bits for the same request: how the simulator keeps its arithmetic independent of where it runs.

An NPU runs a compiled graph the same way every time: a request gives the same bits in any process, batch row
or replica. The simulator computes on the host CPU with torch, whose float32 matrix products go to MKL (x86
builds of torch link it in). Without MKL's conditional numerical reproducibility (CNR), MKL may pick its code
path by the memory alignment of the operands and split a product differently for a different number of
threads, so the same request could score differently in a worker than in the parent. Two measures, both on
by default:

- **Aligned data.** Every tensor a graph computes on starts on a 64-byte boundary: weights read from a
  ``.rbln`` file are copied out of the file's bytes (whose address the process's heap decides) into torch
  allocations; a runtime input that is a view at another offset, or not contiguous, is copied before the
  graph runs, as an NPU copies its inputs into device memory; the attention kernels align each batch row's
  operands. Views inside a graph then sit at offsets fixed by the graph and its shapes, the same in every
  process, row and replica, with any BLAS.
- **MKL's CNR mode.** :func:`pin_mkl_mode` (called by ``activate``) sets ``MKL_CBWR=AUTO,STRICT`` in the
  environment unless it is already set (a user's own value is respected): MKL keeps the code branch it
  would pick for this CPU, with deterministic reductions, and its ``gemm`` gives the same bits for any
  number of threads (the pool gives each of K workers ``cores / K`` threads). MKL reads the variable at its
  first call, not when torch is imported, so the setting takes effect as long as ``rbln_eval`` is imported
  before the process's first matrix product; pool workers inherit it, Ray actors set it on their own
  ``import rbln_eval``. :func:`mkl_mode` says which mode MKL actually uses.

Across hosts the bits are the same only where torch and MKL pick the same code: ATen dispatches its own
kernels (softmax, norms) by CPU capability and ``AUTO`` is the best MKL branch for each CPU, so an AVX2-only
host and an AVX-512 host differ in the last bits. ``MKL_CBWR=COMPATIBLE ATEN_CPU_CAPABILITY=avx2`` on every
host (and ``ONEDNN_MAX_CPU_ISA=AVX2`` for vision towers, whose convolutions run in oneDNN) makes them agree,
at a cost (measured in the README).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any

__all__ = ["ALIGNMENT", "DEFAULT_MKL_CBWR", "ENV_MKL_CBWR", "aligned", "mkl_mode", "pin_mkl_mode", "unpin_mkl_mode"]

logger = logging.getLogger(__name__)

#: MKL's environment variable for its CNR mode (``<branch>[,STRICT]``).
ENV_MKL_CBWR = "MKL_CBWR"
#: The simulator's default: this CPU's own branch, deterministic, thread-count independent ``gemm``.
DEFAULT_MKL_CBWR = "AUTO,STRICT"
#: Byte alignment of every tensor a simulated graph computes on (a cache line; torch's CPU allocator's own).
ALIGNMENT = 64

# MKL's named constants (mkl_cbwr.h).
_CBWR_ALL = ~0
_CBWR_STRICT = 0x10000
_BRANCHES = {
    0: "OFF",
    1: "OFF",
    2: "AUTO",
    3: "COMPATIBLE",
    4: "SSE2",
    6: "SSSE3",
    7: "SSE4_1",
    8: "SSE4_2",
    9: "AVX",
    10: "AVX2",
    12: "AVX512",
    14: "AVX512_E1",
}

_pinned = False


def pin_mkl_mode() -> None:
    """Set ``MKL_CBWR`` to :data:`DEFAULT_MKL_CBWR` unless the environment already has a value (idempotent).

    When torch has already computed, MKL's mode is fixed: if it runs without CNR, the variable is taken back
    again (the pool workers this process starts then compute as it does, their scores matching its own) and
    a warning says that scores may depend on the number of threads. Alignment is taken care of either way.
    """
    global _pinned
    if not os.environ.get(ENV_MKL_CBWR, "").strip():
        os.environ[ENV_MKL_CBWR] = DEFAULT_MKL_CBWR
        _pinned = True
    if "torch" not in sys.modules:  # MKL is not loaded: it reads the variable at its first call
        return
    wanted, actual = _canonical(os.environ[ENV_MKL_CBWR]), mkl_mode()
    if actual == "OFF" and wanted not in (None, "OFF"):
        unpin_mkl_mode()
        logger.warning(
            "MKL already runs without %s=%s (torch computed before the simulator was activated), so scores may "
            "depend on the number of threads. Import rbln_eval, or set %s, before any torch computation.",
            ENV_MKL_CBWR, wanted, ENV_MKL_CBWR,
        )


def unpin_mkl_mode() -> None:
    """Take back the ``MKL_CBWR`` that :func:`pin_mkl_mode` set (MKL itself keeps the mode it started with)."""
    global _pinned
    if _pinned:
        os.environ.pop(ENV_MKL_CBWR, None)
        _pinned = False


def _canonical(value: str) -> str | None:
    """``auto, strict`` -> ``AUTO,STRICT``; None for a value this module does not recognize."""
    parts = [p.strip().upper() for p in value.split(",") if p.strip()]
    if parts and parts[0].startswith("BRANCH="):
        parts[0] = parts[0].removeprefix("BRANCH=")
    if not parts or parts[0] not in set(_BRANCHES.values()) or any(p != "STRICT" for p in parts[1:]):
        return None
    return ",".join(parts[:1] + (["STRICT"] if "STRICT" in parts[1:] else []))


def _mkl_library() -> Any:
    """The library holding torch's MKL (linked into libtorch_cpu), or None (no MKL, another platform)."""
    torch = sys.modules.get("torch")
    if torch is None:
        import torch
    if not torch.backends.mkl.is_available():
        return None
    for name in ("libtorch_cpu.so", "libtorch_cpu.dylib"):
        path = os.path.join(os.path.dirname(torch.__file__), "lib", name)
        if os.path.exists(path):
            try:
                return ctypes.CDLL(path)
            except OSError:
                return None
    return None


def mkl_mode() -> str | None:
    """The CNR mode MKL runs with in this process (``AUTO,STRICT``, ``OFF``, ...), None if torch has no MKL.

    Asking fixes the mode: MKL settles it at its first call, from ``MKL_CBWR`` as the environment has it then.
    """
    library = _mkl_library()
    # torch links MKL in statically and exports only its service layer: mkl_serv_cbwr_get answers as the
    # public mkl_cbwr_get does. A build without it (another BLAS, another MKL) answers None.
    getter = getattr(library, "mkl_serv_cbwr_get", None) if library is not None else None
    if getter is None:
        return None
    getter.restype, getter.argtypes = ctypes.c_int, [ctypes.c_int]
    value = int(getter(_CBWR_ALL))
    branch = _BRANCHES.get(value & ~_CBWR_STRICT, f"BRANCH{value & ~_CBWR_STRICT}")
    return f"{branch},STRICT" if value & _CBWR_STRICT else branch


def aligned(tensor: Any) -> Any:
    """``tensor`` when it is contiguous and starts on an :data:`ALIGNMENT`-byte boundary, else such a copy."""
    if tensor.is_contiguous() and tensor.data_ptr() % ALIGNMENT == 0:
        return tensor
    import torch

    copy = torch.empty_like(tensor, memory_format=torch.contiguous_format)
    if copy.data_ptr() % ALIGNMENT:  # an allocator that aligns less than torch's own: carve an aligned block
        nbytes = tensor.numel() * tensor.element_size()
        raw = torch.empty(nbytes + ALIGNMENT, dtype=torch.uint8)
        start = -raw.data_ptr() % ALIGNMENT
        copy = raw[start : start + nbytes].view(tensor.dtype).view(tensor.shape)
    copy.copy_(tensor)
    return copy
