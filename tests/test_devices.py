"""Device detection and replica placement: rbln-stat parsing, free NPUs, tensor- and data-parallel groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rbln_eval.execution.devices import (
    DevicePlacementError,
    DeviceReport,
    NpuDevice,
    apply_rbln_stat,
    device_groups,
    first_free_npu,
    format_devices,
    parse_device_list,
    plan_replicas,
)
from rbln_eval.errors import ConfigError, RblnEvalError

RBLN_STAT_JSON = Path(__file__).parent / "data" / "rbln_stat.json"


def node(count: int = 8, busy: tuple[int, ...] = ()) -> DeviceReport:
    report = DeviceReport(npus=[NpuDevice(i, "RBLN-CA25") for i in range(count)], rebel="simulator")
    for index in busy:
        report.npus[index].contexts = 1
    return report


def test_parse_device_list() -> None:
    assert parse_device_list("0-7") == list(range(8))
    assert parse_device_list("npu:4-7") == [4, 5, 6, 7]
    assert parse_device_list("0,2,5") == [0, 2, 5]
    assert parse_device_list("3") == [3]
    for bad in ("a-b", "3-1", "0,0", "-1"):
        with pytest.raises(ConfigError):
            parse_device_list(bad)


def test_device_groups_and_format() -> None:
    assert device_groups(list(range(8)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert device_groups(list(range(8)), 1) == [[i] for i in range(8)]
    with pytest.raises(DevicePlacementError, match="do not split into replicas of tp=4"):
        device_groups([0, 1, 2, 3, 4, 5], 4)
    assert format_devices([4, 5, 6, 7]) == "npu:4-7"
    assert format_devices([3]) == "npu:3"
    assert format_devices([0, 2]) == "npu:0,2"


def test_tp4_data_parallel_2_uses_both_halves_of_an_8_device_node() -> None:
    assert plan_replicas(4, data_parallel=2, report=node()) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan_replicas(4, devices="0-7", report=node()) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert plan_replicas(1, data_parallel=4, report=node()) == [[0], [1], [2], [3]]
    with pytest.raises(DevicePlacementError, match="need 12 NPUs, this node has 8"):
        plan_replicas(4, data_parallel=3, report=node())
    with pytest.raises(DevicePlacementError, match="makes 2 replica"):
        plan_replicas(4, devices="0-7", data_parallel=4, report=node())


def test_placement_prefers_free_npus() -> None:
    assert plan_replicas(1, report=node(busy=(0, 1))) == [[2]]
    assert plan_replicas(2, data_parallel=2, report=node(busy=(1,))) == [[2, 3], [4, 5]]
    assert plan_replicas(4, data_parallel=2, report=node(busy=(1,))) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # all needed
    assert first_free_npu(node(busy=(0,))) == 1
    assert first_free_npu(node(4, busy=(0, 1, 2, 3))) == 0


def test_no_npu() -> None:
    empty = DeviceReport()
    assert empty.kind == "cpu"
    assert plan_replicas(1, report=empty) is None
    assert first_free_npu(empty) is None
    with pytest.raises(DevicePlacementError, match="needs NPUs, and this machine has none"):
        plan_replicas(1, data_parallel=2, report=empty)
    assert issubclass(DevicePlacementError, RblnEvalError)


def test_rbln_stat_json_enriches_the_sdk_devices() -> None:
    report = node(4)
    apply_rbln_stat(report, json.loads(RBLN_STAT_JSON.read_text()))
    assert report.kmd_version == "1.3.73"
    first = report.npus[0]
    assert (first.device, first.bus_id, first.numa_node, first.temperature) == ("rbln0", "0000:3b:00.0", 0, "41C")
    assert (first.memory_used, first.memory_total, first.util, first.contexts) == (2 * 2**30, 16 * 2**30, "37.5", 1)
    assert [npu.busy for npu in report.npus] == [True, True, False, False]
    assert first_free_npu(report) == 2
    assert report.to_json()["npus"][2]["busy"] is False


def test_rbln_stat_parsing_is_defensive() -> None:
    report = node(2)
    apply_rbln_stat(report, {"devices": [{"npu": "1", "memory": "n/a"}, "junk", {"name": "no index"}], "contexts": None})
    assert report.kmd_version is None
    assert report.npus[1].memory_total is None and not report.npus[1].busy
    only_driver = DeviceReport()
    apply_rbln_stat(only_driver, {"devices": [{"npu": 0, "name": "RBLN-CA22", "memory": {"used": "0", "total": "1"}}]})
    assert [(n.index, n.name, n.available) for n in only_driver.npus] == [(0, "RBLN-CA22", True)]

