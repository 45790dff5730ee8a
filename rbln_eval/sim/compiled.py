"""Simulated `rebel.RBLNCompiledModel`: a captured graph, its weights and a header.

Inputs marked static at compile time (KV caches) are not runtime inputs: like device DRAM they
live in a `StaticPool` shared by every runtime of one model (see `static`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from . import devices
from ._version import SIM_TARGET_PREFIX
from .graph import Program
from .serialize import RBLNFormatError, read_rbln, write_rbln
from .static import join_pool

__all__ = ["RBLNCompiledModel"]

_ALIGN = 2**21
_DTYPE_NAMES = {
    "float32",
    "float16",
    "bfloat16",
    "float64",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
    "float8_e4m3fn",
    "float8_e5m2",
}


def _dtype_name(dtype: str | torch.dtype) -> str:
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    name = name.removeprefix("torch.")
    if name not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dtype!r} in input_info")
    return name


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _nbytes(shape: Sequence[int], dtype: str) -> int:
    return math.prod(shape) * torch.empty((), dtype=_torch_dtype(dtype)).element_size()


def _align(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


class RBLNCompiledModel:
    """A simulated compiled model.

    Args:
        path: A `.rbln` file written by the simulator (`save`).

    Raises:
        RBLNFormatError: The file is not a simulator artifact, or is corrupted or malformed.
        GraphError: The graph uses an operator outside the simulator's allow-list.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, _parts: dict[str, Any] | None = None) -> None:
        if _parts is None:
            if path is None:
                raise TypeError("RBLNCompiledModel needs the path of a .rbln file")
            header, graph, tensors = read_rbln(path)
            _validate_header(header, path)
            Program(graph, tensors)  # validate before joining a pool
            self._pool = join_pool(header["group"], header["graph_index"])
            self._header, self._graph, self._tensors = header, graph, self._pool.intern(tensors)
            self.name: str | None = Path(path).stem
            self._program_cache: Program | None = None
        else:
            self._header, self._graph, self._tensors = _parts["header"], _parts["graph"], _parts["tensors"]
            self.name = None
            self._program_cache = None
            self._pool = _parts["pool"]

    # -- description ----------------------------------------------------------------------
    @property
    def target(self) -> str:
        """Compile target, `SIM-<npu>`."""
        return self._header["target"]

    @property
    def npu(self) -> str:
        return self._header["npu"]

    @property
    def num_devices(self) -> int:
        return self._header["num_devices"]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        """All inputs in `input_info` order: `{"name", "shape", "dtype", "static"}`."""
        return [dict(entry) for entry in self._header["inputs"]]

    @property
    def static_buffers(self) -> dict[str, dict[str, Any]]:
        """Static buffers at their current size: `{name: {"shape", "dtype"}}`."""
        return {name: dict(entry) for name, entry in self._header["static"].items()}

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the header stored in the `.rbln` file."""
        return {k: v for k, v in self._header.items()}

    def __repr__(self) -> str:
        return f"RBLNCompiledModel(name={self.name!r}, target={self.target!r}, num_devices={self.num_devices})"

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the compiled model to `path` (the `.rbln` format of `serialize`)."""
        header = {k: v for k, v in self._header.items() if k not in _FILE_FIELDS}
        # Weights with identical content share one tensor in memory: store each once.
        canonical: dict[int, str] = {}
        rename: dict[str, str] = {}
        tensors: dict[str, torch.Tensor] = {}
        for key, tensor in self._tensors.items():
            rename[key] = canonical.setdefault(id(tensor), key)
            if rename[key] == key:
                tensors[key] = tensor
        graph = dict(self._graph)
        graph["inputs"] = [
            {**entry, "key": rename[entry["key"]]} if entry.get("source") == "weight" else entry
            for entry in self._graph["inputs"]
        ]
        write_rbln(path, header, graph, tensors)
        if self.name is None:
            self.name = Path(path).stem

    def _program(self) -> Program:
        if self._program_cache is None:
            self._program_cache = Program(self._graph, self._tensors)
        return self._program_cache

    # -- memory -----------------------------------------------------------------------------
    def _chiplets(self) -> int:
        return devices.chiplets_per_device(self.npu)

    def _split(self, nbytes: int) -> list[list[int]]:
        """Spread `nbytes` evenly over the nodes and chiplets."""
        nodes, chiplets = self.num_devices, self._chiplets()
        share = -(-nbytes // (nodes * chiplets)) if nbytes else 0
        return [[share] * chiplets for _ in range(nodes)]

    def _static_bytes(self, name: str) -> int:
        entry = self._header["static"][name]
        return _nbytes(entry["shape"], entry["dtype"])

    def get_alloc_per_chiplet_by_key(self) -> dict[str, list[list[int]]]:
        """Device memory by kind: `{key: [[bytes per chiplet] per node]}`, 2 MiB aligned.

        Keys: `Weight` (reported by one graph when weights are shared), `Activation` (peak of
        intermediate tensors), `DramTensor` (static buffers).
        """
        weight = self._header["weight_bytes"] if self._header["weight_owner"] else 0
        static = sum(self._static_bytes(name) for name in self._header["static"])
        return {
            key: [[_align(size) for size in node] for node in self._split(nbytes)]
            for key, nbytes in (
                ("Weight", weight),
                ("Activation", self._header["activation_bytes"]),
                ("DramTensor", static),
            )
        }

    def get_alloc_per_node_by_key(self) -> dict[str, list[int]]:
        """Device memory by kind, summed over each node's chiplets: `{key: [bytes per node]}`."""
        return {key: [sum(node) for node in nodes] for key, nodes in self.get_alloc_per_chiplet_by_key().items()}

    def exp_get_dram_tensor_sizes(self) -> dict[str, list[list[int]]]:
        """Unaligned size of each static buffer: `{name: [[bytes per chiplet] per node]}`."""
        return {name: self._split(self._static_bytes(name)) for name in self._header["static"]}

    def exp_multiply_buffer_size(self, multipliers: dict[str, int]) -> None:
        """Grow static buffers: the leading (block) axis of `name` is multiplied by `n`."""
        for name, factor in multipliers.items():
            if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
                raise ValueError(f"buffer multiplier for {name!r} must be a positive integer, got {factor!r}")
            self._resize(name, lambda blocks, f=factor: blocks * f)

    def exp_rescale_buffer_size(self, ratios: dict[str, tuple[int, int]]) -> None:
        """Rescale static buffers: the leading axis of `name` becomes `blocks * target / current`."""
        for name, ratio in ratios.items():
            target, current = ratio
            if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (target, current)):
                raise ValueError(f"buffer ratio for {name!r} must be two positive integers, got {ratio!r}")

            def rescale(blocks: int, t: int = target, c: int = current, n: str = name) -> int:
                if (blocks * t) % c:
                    raise ValueError(f"cannot rescale {n!r}: {blocks} blocks * {t}/{c} is not a whole number")
                return blocks * t // c

            self._resize(name, rescale)

    def _resize(self, name: str, fn: Any) -> None:
        static = self._header["static"]
        if name not in static:
            raise KeyError(f"{name!r} is not a static buffer of this compiled model (have {sorted(static)})")
        shape = list(static[name]["shape"])
        shape[0] = fn(shape[0])
        header = dict(self._header)
        header["static"] = {**static, name: {**static[name], "shape": shape}}
        self._header = header


_FILE_FIELDS = {"format", "format_version", "sections", "payload_size", "payload_sha256"}
_HEADER_FIELDS = {
    "sim_version": str,
    "target": str,
    "npu": str,
    "num_devices": int,
    "inputs": list,
    "outputs": list,
    "static": dict,
    "group": str,
    "graph_index": int,
    "weight_bytes": int,
    "weight_owner": bool,
    "activation_bytes": int,
}


def _validate_header(header: dict[str, Any], path: Any) -> None:
    for field, kind in _HEADER_FIELDS.items():
        if not isinstance(header.get(field), kind):
            raise RBLNFormatError(f"{path}: header field {field!r} is missing or not a {kind.__name__}")
    if not header["target"].startswith(SIM_TARGET_PREFIX):
        raise RBLNFormatError(f"{path}: target {header['target']!r} is not a simulated target")
    for entry in header["inputs"]:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("name"), str)
            and isinstance(entry.get("shape"), list)
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and entry.get("dtype") in _DTYPE_NAMES
            and isinstance(entry.get("static"), bool)
        ):
            raise RBLNFormatError(f"{path}: malformed input entry {str(entry)[:200]}")
    for name, entry in header["static"].items():
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("shape"), list)
            and entry["shape"]
            and all(isinstance(d, int) and d >= 0 for d in entry["shape"])
            and entry.get("dtype") in _DTYPE_NAMES
        ):
            raise RBLNFormatError(f"{path}: malformed static buffer {name!r}")
