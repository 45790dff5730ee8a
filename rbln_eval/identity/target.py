"""The compile target: which NPU a bundle is for, and whether it runs on the simulator.

A key's target is the NPU name (``RBLN-CA25``), or ``SIM-<name>`` for bundles compiled on the simulator,
so a simulated bundle can never be mistaken for a real one. This is the one place that asks the ``rebel``
SDK for the installed NPU's name when no device index is involved.
"""

from __future__ import annotations

import os

from rbln_eval.util.constants import NPU_ENV, SIM_TARGET_PREFIX
from rbln_eval.errors import ConfigError


def simulator_active() -> bool:
    """Whether the ``rebel`` module this process uses is rbln-eval's simulator."""
    from rbln_eval import sim

    return bool(sim.is_active())


def installed_npu() -> str | None:
    """The name of this machine's NPU as the SDK reports it (``RBLN-CA25``), ``None`` without one."""
    try:
        import rebel  # type: ignore[import-not-found]

        name = rebel.get_npu_name()
    except Exception:  # no SDK, or no device
        return None
    return str(name) if name else None


def is_simulated(target: str) -> bool:
    return target.startswith(SIM_TARGET_PREFIX)


def npu_of(target: str) -> str:
    """The device name optimum-rbln compiles for: the target without the simulator mark."""
    return target.removeprefix(SIM_TARGET_PREFIX)


def resolve_target(npu: str | None) -> str:
    """The target recorded in the key: the NPU name, ``SIM-<name>`` under the simulator."""
    name = npu or os.environ.get(NPU_ENV) or installed_npu()
    if not name:
        raise ConfigError(
            "no NPU detected and no target given", "pass {npu} (e.g. RBLN-CA25) to compile for a target"
        )
    name = name.strip()
    if simulator_active():
        return name if is_simulated(name) else SIM_TARGET_PREFIX + name
    if is_simulated(name):
        raise ConfigError(f"target {name} is a simulator target, but the simulator is not active (RBLN_EVAL_SIMULATE=1)")
    return name
