"""Simulator of the Rebellions `rebel` SDK: compile and run optimum-rbln models on CPU.

When active, `import rebel` yields a drop-in module (`rbln_eval/sim/rebel/`) and
`importlib.metadata.version("rebel-compiler")` answers `SIM_VERSION`, so the real optimum-rbln
compiles, saves, loads and runs models without an NPU. Outputs match plain transformers.

The simulator exists only when asked for:

- `RBLN_EVAL_SIMULATE=1` (or `true`/`yes`/`on`) in the environment: `import rbln_eval` activates it.
  `RBLN_EVAL_SIMULATE=force` activates it even if a real `rebel` is importable.
- `rbln_eval.sim.activate()` in Python, before `optimum.rbln` is imported.

It never shadows a real `rebel` unless forced (`SimulatorConflictError`). Activation also sets
`RBLN_EVAL_SIMULATE` in `os.environ`, so child processes simulate as well, and `MKL_CBWR=AUTO,STRICT`
unless it is set (see `rbln_eval.sim.numerics`: the same request gives the same bits in any process,
batch row or replica).

Other environment variables (read at use):

- `RBLN_EVAL_SIM_DEVICES` (default 8), `RBLN_EVAL_SIM_NPU` (default `RBLN-CA25`): the simulated node.
- `RBLN_EVAL_SIM_LATENCY_MS`: the device time of every runtime call, in milliseconds: a call returns
  no sooner than this after it started. The simulator's own arithmetic stands for the device's work and
  counts toward it, so K simulated devices run side by side however few host cores compute them.
- `RBLN_EVAL_SIM_COMPILE_MS`: extra time every graph compile takes, in milliseconds (a compile long
  enough to interrupt).
- `RBLN_EVAL_SIM_COUNTERS_FILE`: write the call counters there as JSON at exit.
- `RBLN_EVAL_SIM_PERTURB` (tests only): add `value * sin(i)` to the i-th element of every
  floating-point runtime output, so scores drift from the reference like a faulty toolchain's would.

Counters: `counters()` returns `{graph: {"calls", "input_tokens", "seconds"}}` (see
`rbln_eval.sim.counting` module docs for what is counted), `reset_counters()` zeroes them,
`format_counters()` renders a table.

Simulated compiles target `sim_target(npu) == "SIM-" + npu`, recorded in every `.rbln` file.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any

from . import counting as _counters
from . import numerics as _numerics
from ._finder import REBEL_DIR, SimulatorFinder
from ._version import SIM_TARGET_PREFIX, SIM_VERSION, sim_target
from .counting import ENV_COUNTERS_FILE
from .devices import ENV_DEVICES, ENV_NPU

__all__ = [
    "ENV_COUNTERS_FILE",
    "ENV_DEVICES",
    "ENV_LATENCY_MS",
    "ENV_NPU",
    "ENV_SIMULATE",
    "SIM_TARGET_PREFIX",
    "SIM_VERSION",
    "SimulatorConflictError",
    "activate",
    "activate_from_env",
    "counters",
    "deactivate",
    "format_counters",
    "is_active",
    "reset_counters",
    "sim_target",
]

from ._env import ENV_LATENCY_MS, ENV_SIMULATE  # noqa: E402

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}

_finder: SimulatorFinder | None = None
_set_env = False


class SimulatorConflictError(RuntimeError):
    """A real `rebel` SDK is importable (or imported) and the simulator was not forced."""


def _is_ours(module: Any) -> bool:
    origin = getattr(module, "__file__", None)
    return origin is not None and os.path.realpath(origin).startswith(str(REBEL_DIR))


def _real_rebel_origin() -> str | None:
    """Where a real `rebel` would be imported from, if anywhere (our finder not consulted)."""
    module = sys.modules.get("rebel")
    if module is not None and not _is_ours(module):
        return getattr(module, "__file__", None) or "<already imported>"
    try:
        spec = importlib.util.find_spec("rebel") if module is None else None
    except (ImportError, ValueError):
        spec = None
    if spec is not None and not (spec.origin and os.path.realpath(spec.origin).startswith(str(REBEL_DIR))):
        return spec.origin or "<namespace package>"
    return None


def is_active() -> bool:
    """Whether the simulator serves `import rebel` in this process."""
    return _finder is not None and _finder in sys.meta_path


def activate(force: bool = False) -> None:
    """Serve `rebel` from the simulator in this process (idempotent).

    Call before `optimum.rbln` is imported (and before torch computes anything, so that MKL starts in the
    simulator's CNR mode).

    Args:
        force: Shadow a real `rebel` that is importable but not yet imported.

    Raises:
        SimulatorConflictError: A real `rebel` is importable and `force` is False, or a real
            `rebel` is already imported (cannot be replaced, even when forced).
    """
    global _finder, _set_env
    if is_active():
        return
    loaded = sys.modules.get("rebel")
    if loaded is not None and not _is_ours(loaded):
        raise SimulatorConflictError(
            f"a real rebel SDK is already imported from {getattr(loaded, '__file__', '?')}; "
            "the simulator must be activated before rebel or optimum.rbln is imported"
        )
    if not force:
        origin = _real_rebel_origin()
        if origin is not None:
            raise SimulatorConflictError(
                f"a real rebel SDK is importable ({origin}); refusing to shadow it with the simulator. "
                f"Unset {ENV_SIMULATE} to use the NPU, or force the simulator "
                f"({ENV_SIMULATE}=force or rbln_eval.sim.activate(force=True))."
            )
    _finder = SimulatorFinder()
    sys.meta_path.insert(0, _finder)
    if os.environ.get(ENV_SIMULATE, "").strip().lower() in _FALSE:
        os.environ[ENV_SIMULATE] = "force" if force else "1"
        _set_env = True
    _numerics.pin_mkl_mode()


def deactivate() -> None:
    """Stop serving `rebel` from the simulator and forget the simulated modules.

    Modules that already hold a reference to the simulated `rebel` (an imported `optimum.rbln`)
    keep it; deactivation only affects later imports.
    """
    global _finder, _set_env
    if _finder is not None and _finder in sys.meta_path:
        sys.meta_path.remove(_finder)
    _finder = None
    for name in [n for n in sys.modules if n == "rebel" or n.startswith("rebel.")]:
        if _is_ours(sys.modules[name]):
            del sys.modules[name]
    if _set_env:
        os.environ.pop(ENV_SIMULATE, None)
        _set_env = False
    _numerics.unpin_mkl_mode()


def activate_from_env() -> bool:
    """Activate if `RBLN_EVAL_SIMULATE` asks for it; returns whether the simulator is active.

    Raises:
        ValueError: `RBLN_EVAL_SIMULATE` has an unrecognized value.
        SimulatorConflictError: See `activate`.
    """
    value = os.environ.get(ENV_SIMULATE, "").strip().lower()
    if value in _FALSE:
        return is_active()
    if value == "force":
        activate(force=True)
    elif value in _TRUE:
        activate()
    else:
        raise ValueError(f"{ENV_SIMULATE} must be one of 1/true/yes/on, 0/false/no/off or 'force'; got {value!r}")
    return True


def counters() -> dict[str, dict[str, Any]]:
    """Snapshot of the per-graph call counters: `{graph: {"calls", "input_tokens", "seconds"}}`."""
    return _counters.snapshot()


def reset_counters() -> None:
    """Zero the per-graph call counters."""
    _counters.reset()


def format_counters(snapshot: dict[str, dict[str, Any]] | None = None) -> str:
    """A printable table of `snapshot` (default: the current counters)."""
    return _counters.format_counters(snapshot)
