"""The simulated node: how many NPUs, which kind, how much memory.

Configured by environment variables, read on every call so a test can change them:

- `RBLN_EVAL_SIM_DEVICES`: number of NPUs in the node (default 8).
- `RBLN_EVAL_SIM_NPU`: NPU name of every device (default `RBLN-CA25`).
- `RBLN_DEVICES`: the device ids this process may open (all when unset), as with the real SDK.
"""

from __future__ import annotations

import os
import re

from ._env import env_number

__all__ = [
    "DEFAULT_DEVICES",
    "DEFAULT_NPU",
    "ENV_DEVICES",
    "ENV_NPU",
    "DeviceError",
    "chiplets_per_device",
    "device_count",
    "dram_per_chiplet",
    "npu_name",
    "normalize_npu",
    "resolve_devices",
    "visible_devices",
]

from ._env import ENV_DEVICES, ENV_NPU, ENV_VISIBLE_DEVICES  # noqa: E402
DEFAULT_DEVICES = 8
DEFAULT_NPU = "RBLN-CA25"
_NPU_PATTERN = re.compile(r"^RBLN-(CA|CR)\d{1,2}$")


class DeviceError(RuntimeError):
    """A device does not exist in the simulated node, or does not fit the compiled model."""


def device_count() -> int:
    """Number of NPUs in the simulated node."""
    return env_number(ENV_DEVICES, int, DEFAULT_DEVICES, "a non-negative integer", minimum=0, error=DeviceError)


def _node_npu() -> str:
    name = os.environ.get(ENV_NPU, "").strip() or DEFAULT_NPU
    if not _NPU_PATTERN.match(name):
        raise DeviceError(f"{ENV_NPU} must name an RBLN NPU such as 'RBLN-CA25', got {name!r}")
    return name


def npu_name(index: int | None = None) -> str | None:
    """NPU name of device `index` (default 0), or None if there is no such device."""
    index = 0 if index is None else index
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < device_count():
        return None
    return _node_npu()


def visible_devices() -> set[int] | None:
    """The ids in `RBLN_DEVICES` (None when unset: every device is visible)."""
    raw = os.environ.get(ENV_VISIBLE_DEVICES)
    if raw is None:
        return None
    try:
        return {int(part) for part in raw.split(",") if part.strip()}
    except ValueError:
        raise DeviceError(f"{ENV_VISIBLE_DEVICES} must list device ids such as '0,1,2,3', got {raw!r}") from None


def normalize_npu(npu: str) -> str:
    """Strip the form factor: `RBLN-CA25` -> `RBLN-CA2` (the compatibility class of a target)."""
    match = re.match(r"(RBLN-CA|RBLN-CR)(\d+)", npu)
    if not match:
        return npu
    prefix, num = match.groups()
    return f"{prefix}0" if len(num) == 1 else f"{prefix}{num[:-1]}"


def chiplets_per_device(npu: str) -> int:
    """Chiplets per device: ATOM (CA) reports one, REBEL (CR) four."""
    return 4 if npu.startswith("RBLN-CR") else 1


def dram_per_chiplet(npu: str) -> int:
    """Device DRAM available to models on one chiplet, in bytes (system reserve excluded)."""
    if npu.startswith("RBLN-CR"):
        return 144 * 2**30 // 4 - 2**30
    return 16 * 2**30 - 288 * 2**20


def resolve_devices(device: int | list[int] | tuple[int, ...] | None, num_devices: int, npu: str) -> list[int]:
    """The device ids a runtime of a model compiled for `num_devices` x `npu` runs on.

    Raises:
        DeviceError: A device does not exist, the count does not match, or the NPU differs.
    """
    if device is None:
        visible = visible_devices()
        devices = sorted(visible)[:num_devices] if visible is not None else list(range(num_devices))
    elif isinstance(device, int) and not isinstance(device, bool):
        devices = [device]
    elif isinstance(device, (list, tuple)) and all(isinstance(d, int) and not isinstance(d, bool) for d in device):
        devices = list(device)
    else:
        raise DeviceError(f"device must be an int, a list of ints or None, got {device!r}")
    if len(devices) != num_devices:
        raise DeviceError(
            f"the model was compiled for {num_devices} device(s) (num_devices) but the runtime was "
            f"given {len(devices)}: {devices}"
        )
    if len(set(devices)) != len(devices):
        raise DeviceError(f"device list {devices} names a device twice")
    count = device_count()
    visible = visible_devices()
    for index in devices:
        if visible is not None and index not in visible:
            raise DeviceError(
                f"NPU device {index} is not among this process's devices ({ENV_VISIBLE_DEVICES}="
                f"{','.join(str(d) for d in sorted(visible))})"
            )
        name = npu_name(index)
        if name is None:
            raise DeviceError(
                f"NPU device {index} does not exist: the simulated node has {count} device(s) "
                f"(ids 0..{count - 1}; set {ENV_DEVICES} to change)"
            )
        if normalize_npu(name) != normalize_npu(npu):
            raise DeviceError(f"device {index} is a {name}, but the model was compiled for {npu}")
    return devices
