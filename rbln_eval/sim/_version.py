"""Version and target naming of the simulator (no heavy imports)."""

from __future__ import annotations

__all__ = ["SIM_TARGET_PREFIX", "SIM_VERSION", "sim_target"]

#: Version the simulated `rebel-compiler` distribution reports. Its base version matches the
#: optimum-rbln release the simulator follows, so optimum-rbln's compatibility check is silent.
SIM_VERSION = "0.12.0+sim"

#: Prefix of every simulated compile target; a bundle compiled on the simulator is keyed by it.
SIM_TARGET_PREFIX = "SIM-"


def sim_target(npu_name: str) -> str:
    """The compile target of a simulated compile for `npu_name`: `"SIM-" + npu_name`."""
    if not isinstance(npu_name, str) or not npu_name:
        raise ValueError(f"npu_name must be a non-empty string, got {npu_name!r}")
    if npu_name.startswith(SIM_TARGET_PREFIX):
        return npu_name
    return SIM_TARGET_PREFIX + npu_name
