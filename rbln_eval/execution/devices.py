"""The devices of this machine, in priority order NPU → CUDA → CPU, and how replicas are placed on NPUs.

NPUs come from the ``rebel`` SDK (``device_count``, ``get_npu_name``, ``npu_is_available``), enriched with
``rbln-smi -j`` (or the deprecated ``rbln-stat -j`` when only that is on ``PATH``): memory, temperature, PCI bus,
status, and the contexts that show which devices are busy. ``RBLN_DEVICES`` (set by Ray for each task and
actor, or by hand) limits the NPUs this process may use: the others are reported, but never chosen. CUDA
devices come from torch.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rbln_eval.util.constants import RBLN_DEVICES_ENV
from rbln_eval.errors import ConfigError
from rbln_eval.errors import DevicePlacementError

logger = logging.getLogger(__name__)

RBLN_SMI = "rbln-smi"
RBLN_STAT = "rbln-stat"
#: Device tools, preferred first: ``rbln-smi`` replaces the deprecated ``rbln-stat`` (same ``-j`` JSON).
SMI_TOOLS = (RBLN_SMI, RBLN_STAT)
RBLN_STAT_TIMEOUT = 15.0


@dataclass
class NpuDevice:
    """One NPU. Fields after ``available`` are filled from ``rbln-stat`` when it exists."""

    index: int
    name: str | None
    available: bool = True
    device: str | None = None
    uuid: str | None = None
    bus_id: str | None = None
    numa_node: int | None = None
    temperature: str | None = None
    memory_used: int | None = None
    memory_total: int | None = None
    util: str | None = None
    contexts: int = 0

    @property
    def busy(self) -> bool:
        """Whether another process holds memory or a context on the device (known only via ``rbln-stat``)."""
        return self.contexts > 0 or bool(self.memory_used)


@dataclass
class CudaDevice:
    index: int
    name: str
    memory_total: int


@dataclass
class DeviceReport:
    """What :func:`detect` found. ``kind`` is the device rbln-eval will use: ``npu``, ``cuda`` or ``cpu``."""

    npus: list[NpuDevice] = field(default_factory=list)
    cuda: list[CudaDevice] = field(default_factory=list)
    rebel: str | None = None  # "sdk", "simulator" or None (not installed)
    rbln_stat: str | None = None  # path of the device tool used (rbln-smi, else rbln-stat), if on PATH
    smi_tool: str | None = None  # its name
    kmd_version: str | None = None
    problems: list[str] = field(default_factory=list)
    visible: list[int] | None = None  # RBLN_DEVICES, when set: the only NPUs this process may use

    @property
    def kind(self) -> str:
        if self.npus:
            return "npu"
        if self.cuda:
            return "cuda"
        return "cpu"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind
        for npu, raw in zip(data["npus"], self.npus):
            npu["busy"] = raw.busy
        return data


def detect(use_rbln_stat: bool = True) -> DeviceReport:
    """Detect NPUs (``rebel`` + ``rbln-stat``), CUDA devices (torch), and report what is missing."""
    report = DeviceReport()
    _detect_rebel(report)
    if use_rbln_stat:
        _detect_rbln_stat(report)
    _apply_visible(report)
    _detect_cuda(report)
    return report


def visible_npus() -> list[int] | None:
    """The NPU ids in ``RBLN_DEVICES``, or None when it is unset (every NPU may be used)."""
    raw = os.environ.get(RBLN_DEVICES_ENV)
    if raw is None:
        return None
    try:
        return sorted({int(part) for part in raw.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"{RBLN_DEVICES_ENV}={raw!r} is not a list of NPU ids", "set it like 0,1,2,3 or unset it") from None


def _apply_visible(report: DeviceReport) -> None:
    """NPUs outside ``RBLN_DEVICES`` stay in the report but are not available to this process."""
    report.visible = visible_npus()
    if report.visible is None:
        return
    for npu in report.npus:
        if npu.index not in report.visible:
            npu.available = False


def _detect_rebel(report: DeviceReport) -> None:
    try:
        import rebel  # type: ignore[import-not-found]
    except ImportError:
        return
    except Exception as exc:  # a broken SDK install
        report.problems.append(f"rebel could not be imported: {exc}")
        return
    report.rebel = "simulator" if getattr(rebel, "__rbln_sim__", False) else "sdk"
    try:
        count = int(rebel.device_count())
    except Exception as exc:
        report.problems.append(f"rebel.device_count() failed: {exc}")
        return
    for index in range(count):
        try:
            name = rebel.get_npu_name(index)
            available = bool(rebel.npu_is_available(index))
        except Exception as exc:
            report.problems.append(f"NPU {index}: {exc}")
            name, available = None, False
        report.npus.append(NpuDevice(index=index, name=name, available=available))


def _detect_cuda(report: DeviceReport) -> None:
    try:
        import torch

        if not torch.cuda.is_available():
            return
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            report.cuda.append(CudaDevice(index, props.name, int(props.total_memory)))
    except Exception as exc:
        report.problems.append(f"CUDA detection failed: {exc}")


def find_smi_tool() -> tuple[str, str] | None:
    """``(name, path)`` of ``rbln-smi``, else of ``rbln-stat``; ``None`` when neither is on PATH."""
    for name in SMI_TOOLS:
        path = shutil.which(name)
        if path is not None:
            return name, path
    return None


def run_rbln_stat() -> tuple[str | None, dict[str, Any] | None, str | None]:
    """``(path, parsed JSON, problem)`` of ``rbln-smi -j`` (else ``rbln-stat -j``); ``(None, None, None)``
    when neither is on PATH."""
    found = find_smi_tool()
    if found is None:
        return None, None, None
    name, path = found
    try:
        done = subprocess.run([path, "-j"], capture_output=True, text=True, timeout=RBLN_STAT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return path, None, f"{name} -j failed: {exc}"
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        return path, None, f"{name} -j exited with {done.returncode}" + (f": {detail[-1]}" if detail else "")
    try:
        data = json.loads(done.stdout)
    except ValueError as exc:
        return path, None, f"{name} -j printed no JSON ({exc})"
    if not isinstance(data, dict):
        return path, None, f"{name} -j printed JSON of an unexpected shape"
    return path, data, None


def _int(value: Any) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def apply_rbln_stat(report: DeviceReport, data: dict[str, Any]) -> None:
    """Merge ``rbln-smi -j`` / ``rbln-stat -j`` output into ``report`` (unknown or missing fields are skipped).

    A device whose ``status`` is given and is not ``normal`` is marked unavailable."""
    report.kmd_version = str(data["KMD_version"]) if data.get("KMD_version") is not None else None
    by_index = {npu.index: npu for npu in report.npus}
    for entry in data.get("devices") or []:
        if not isinstance(entry, dict):
            continue
        index = _int(entry.get("npu"))
        if index is None:
            continue
        npu = by_index.get(index)
        if npu is None:  # the driver sees a device the SDK does not
            npu = NpuDevice(index=index, name=entry.get("name"), available=report.rebel is None)
            report.npus.append(npu)
            by_index[index] = npu
        npu.name = npu.name or entry.get("name")
        npu.device = entry.get("device")
        npu.uuid = entry.get("uuid")
        pci = entry.get("pci") if isinstance(entry.get("pci"), dict) else {}
        npu.bus_id = pci.get("bus_id")
        npu.numa_node = _int(pci.get("numa_node"))
        npu.temperature = entry.get("temperature")
        memory = entry.get("memory") if isinstance(entry.get("memory"), dict) else {}
        npu.memory_used = _int(memory.get("used"))
        npu.memory_total = _int(memory.get("total"))
        npu.util = None if entry.get("util") is None else str(entry.get("util"))
        status = entry.get("status")
        if isinstance(status, str) and status.strip() and status.strip().lower() != "normal":
            npu.available = False
    for context in data.get("contexts") or []:
        index = _int(context.get("npu")) if isinstance(context, dict) else None
        if index in by_index:
            by_index[index].contexts += 1
    report.npus.sort(key=lambda npu: npu.index)


def _detect_rbln_stat(report: DeviceReport) -> None:
    path, data, problem = run_rbln_stat()
    report.rbln_stat = path
    report.smi_tool = None if path is None else Path(path).name
    if problem:
        report.problems.append(problem)
    if data is not None:
        apply_rbln_stat(report, data)


# --------------------------------------------------------------------------------------------------
# Placement
# --------------------------------------------------------------------------------------------------


def parse_device_list(text: str) -> list[int]:
    """``0-7`` / ``0,1,2,3`` / ``npu:0-3`` / ``4`` → a list of NPU indices."""
    body = str(text).strip().lower().removeprefix("npu:").removeprefix("rbln:")
    devices: list[int] = []
    try:
        for part in body.split(","):
            part = part.strip()
            if "-" in part:
                first, last = (int(p) for p in part.split("-", 1))
                if last < first:
                    raise ValueError
                devices.extend(range(first, last + 1))
            else:
                devices.append(int(part))
    except ValueError:
        raise ConfigError(f"devices {text!r} are not NPU indices (N, N-M or N,M,…)") from None
    if len(set(devices)) != len(devices) or any(d < 0 for d in devices):
        raise ConfigError(f"devices {text!r} name a device twice or a negative index")
    return devices


#: lm_eval's own device spellings: they name no NPU, so they mean the default placement.
_DEFAULT_PLACEMENT = frozenset({"", "cpu", "npu", "rbln", "auto", "cuda", "mps"})


def parse_device(device: object) -> list[int] | None:
    """One replica's devices: ``npu:3`` / ``3`` / ``0,1,2,3`` / ``0-3`` → a list; ``None`` → default placement.

    lm_eval's device spellings (``cpu``, ``cuda``, ``cuda:0`` — its CLI default) also mean the default.
    """
    if device is None or isinstance(device, bool):
        return None
    if isinstance(device, int):
        return parse_device_list(str(device))
    if isinstance(device, (list, tuple)):
        return parse_device_list(",".join(str(d) for d in device))
    text = str(device).strip().lower()
    if text in _DEFAULT_PLACEMENT or text.startswith("cuda:"):
        return None
    return parse_device_list(text)


def device_groups(devices: list[int], tp: int) -> list[list[int]]:
    """Split ``devices`` into replicas of ``tp`` consecutive entries each."""
    if tp < 1:
        raise ConfigError(f"tensor parallelism must be positive, got {tp}")
    if not devices or len(devices) % tp:
        raise DevicePlacementError(
            f"{len(devices)} device(s) {format_devices(devices)} do not split into replicas of tp={tp}: "
            f"give a multiple of {tp} devices"
        )
    return [devices[i : i + tp] for i in range(0, len(devices), tp)]


def format_devices(devices: list[int]) -> str:
    """``[4, 5, 6, 7]`` → ``npu:4-7``; ``[0, 2]`` → ``npu:0,2``."""
    if not devices:
        return "npu:-"
    if devices == list(range(devices[0], devices[0] + len(devices))) and len(devices) > 1:
        return f"npu:{devices[0]}-{devices[-1]}"
    return "npu:" + ",".join(str(d) for d in devices)


def free_groups(report: DeviceReport, tp: int, count: int) -> list[list[int]]:
    """``count`` groups of ``tp`` consecutive NPUs, preferring free ones (busy is known only via ``rbln-stat``).

    Raises :class:`DevicePlacementError` when the node has too few NPUs.
    """
    usable = [npu.index for npu in report.npus if npu.available]
    needed = tp * count
    if len(usable) < needed:
        raise DevicePlacementError(
            f"{count} replica(s) of tp={tp} need {needed} NPUs, this node has {len(usable)} usable",
            "lower {data_parallel} or compile with a smaller {tp}",
        )
    free = {npu.index for npu in report.npus if npu.available and not npu.busy}
    windows = [usable[i : i + tp] for i in range(len(usable) - tp + 1)]
    windows = [w for w in windows if w == list(range(w[0], w[0] + tp))]
    aligned = [w for w in windows if w[0] % tp == 0]
    # Free windows on tp boundaries first, then any free window, then busy ones on boundaries.
    candidates = [w for w in aligned if set(w) <= free] + [w for w in windows if set(w) <= free] + aligned
    groups: list[list[int]] = []
    taken: set[int] = set()
    for window in candidates:
        if len(groups) == count:
            break
        if not taken & set(window):
            groups.append(window)
            taken |= set(window)
    if len(groups) < count:
        raise DevicePlacementError(
            f"could not place {count} replica(s) on {tp} consecutive NPUs each", "pass {devices} explicitly"
        )
    return sorted(groups)


def _check_visible(groups: list[list[int]]) -> None:
    visible = visible_npus()
    if visible is None:
        return
    outside = sorted({d for group in groups for d in group} - set(visible))
    if outside:
        raise DevicePlacementError(
            f"{format_devices(outside)} is outside {RBLN_DEVICES_ENV}={','.join(map(str, visible))}",
            "choose among those NPUs, or unset " + RBLN_DEVICES_ENV,
        )


def first_free_npu(report: DeviceReport) -> int | None:
    """The first NPU with no memory used and no context (per ``rbln-stat``), else the first NPU; None without NPUs."""
    usable = [npu for npu in report.npus if npu.available]
    for npu in usable:
        if not npu.busy:
            return npu.index
    return usable[0].index if usable else None


def plan_replicas(
    tp: int,
    devices: str | None = None,
    data_parallel: int | None = None,
    report: DeviceReport | None = None,
    device: object = None,
) -> list[list[int]] | None:
    """The device group of each replica of a bundle compiled for ``tp`` devices.

    ``device`` places one replica (``npu:2``, ``0-3``); ``devices`` (``0-7``) are split into groups of
    ``tp``; ``data_parallel`` K alone takes K groups of consecutive free NPUs; none of them gives one
    replica on the first free NPUs. ``None`` when this machine has no NPU (loading then says what is missing).
    """
    one = parse_device(device)
    if one is not None:
        if devices or (data_parallel or 1) > 1:
            raise ConfigError("places one replica", "use {devices} (or {data_parallel}) for several", option="device")
        _check_visible([one])
        return [one]
    if data_parallel is not None and data_parallel < 1:
        raise ConfigError(f"must be a positive integer, got {data_parallel}", option="data_parallel")
    if devices:
        groups = device_groups(parse_device_list(devices), tp)
        _check_visible(groups)
        if data_parallel is not None and data_parallel != len(groups):
            raise DevicePlacementError(
                f"{devices} makes {len(groups)} replica(s) of tp={tp}, but {{data_parallel}} is {data_parallel}",
                "drop one of them or make them agree", option="devices",
            )
        return groups
    report = report if report is not None else detect()
    if not any(npu.available for npu in report.npus):
        if data_parallel is not None and data_parallel > 1:
            raise DevicePlacementError(f"{data_parallel} needs NPUs, and this machine has none", option="data_parallel")
        return None
    return free_groups(report, tp, data_parallel or 1)
