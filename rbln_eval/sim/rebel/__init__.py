"""Simulated `rebel` SDK (rebel-compiler) served by `rbln_eval.sim`.

Exposes what optimum-rbln uses: `compile_from_torch`, `compile`, `RBLNCompiledModel`, `Runtime`,
`npu_is_available`, `get_npu_name`, `device_count`, `compile_context.CompileContext`, and the
`torch.ops.rbln_custom_ops` operators (registered on import, as the SDK does).
"""

from __future__ import annotations

from rbln_eval.sim import ops as _ops
from rbln_eval.sim._version import SIM_VERSION as __version__
from rbln_eval.sim.compiled import RBLNCompiledModel
from rbln_eval.sim.compiler import compile, compile_from_torch
from rbln_eval.sim.devices import device_count as _device_count
from rbln_eval.sim.devices import npu_name as _npu_name
from rbln_eval.sim.runtime import Runtime

from . import compile_context

__all__ = [
    "RBLNCompiledModel",
    "__version__",
    "Runtime",
    "compile",
    "compile_context",
    "compile_from_torch",
    "device_count",
    "get_npu_name",
    "npu_is_available",
]

#: Marks this module as the simulator (the real SDK has no such attribute).
__rbln_sim__ = True

_ops.register()


def npu_is_available(device_id: int = 0) -> bool:
    """Whether simulated device `device_id` exists."""
    return _npu_name(device_id) is not None


def get_npu_name(device_id: int | None = None) -> str | None:
    """NPU name of simulated device `device_id` (default 0), or None if it does not exist."""
    return _npu_name(device_id)


def device_count() -> int:
    """Number of NPUs in the simulated node."""
    return _device_count()
