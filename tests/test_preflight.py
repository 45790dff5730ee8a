"""The cheap checks in-process: options, devices against a node's NPUs, and how network faults are named."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from rbln_eval.cli.failures import flag
from rbln_eval.execution.devices import DevicePlacementError, DeviceReport, NpuDevice
from rbln_eval.errors import ConfigError, RblnEvalError
from rbln_eval.util.netfaults import describe_failure, network_reason, probe_hub
from rbln_eval.evaluation.preflight import check_devices, check_eval_options, parse_gen_kwargs


def node(count: int, unavailable: tuple[int, ...] = ()) -> DeviceReport:
    return DeviceReport(npus=[NpuDevice(i, "RBLN-CA25", available=i not in unavailable) for i in range(count)])


@pytest.mark.parametrize(
    ("num_fewshot", "limit", "gen_kwargs", "message"),
    [
        (-1, None, None, "--num_fewshot must be 0 or more, got -1"),
        (None, 0, None, "--limit must be positive (documents per task, or a fraction below 1), got 0"),
        (None, 2.5, None, "--limit 2.5: give a whole number of documents, or a fraction below 1"),
        (None, None, "max_gen_toks=8,temperature", "--gen_kwargs 'max_gen_toks=8,temperature': 'temperature' is not key=value"),
        (None, None, "=3", "--gen_kwargs '=3': '=3' is not key=value"),
    ],
)
def test_bad_options(num_fewshot, limit, gen_kwargs, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_eval_options(num_fewshot, limit, gen_kwargs)
    assert caught.value.render(flag).startswith(message)  # as the command line spells it


def test_good_options_pass() -> None:
    check_eval_options(0, 0.5, None)
    check_eval_options(5, 10, "until=.")
    assert parse_gen_kwargs("max_gen_toks=8,do_sample=false,temperature=0.0") == {
        "max_gen_toks": 8, "do_sample": False, "temperature": 0.0
    }


def test_devices_are_checked_against_the_node() -> None:
    assert check_devices(1, "npu:3", report=node(8)).groups == [[3]]
    assert check_devices(4, None, data_parallel=2, report=node(8)).groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert check_devices(2, None, "4-7", report=node(8)).groups == [[4, 5], [6, 7]]
    assert check_devices(4, None, report=node(0)).groups is None  # no NPU: loading says what is missing
    cases = [
        ((1, "npu:99"), "--device npu:99: this node has 8 NPU(s) (npu:0-7), there is no npu:99; see `rbln-eval doctor`"),
        ((4, None, "6-9"), "--devices 6-9: this node has 8 NPU(s) (npu:0-7), there is no npu:8-9; see `rbln-eval doctor`"),
        ((4, None), "1 replica(s) of tp=4 need 4 NPUs, this node has 2 usable: lower --data-parallel or compile with a smaller --tp"),
        ((2, "0-3"), "--device 0-3 names 4 NPU(s), the bundle is compiled for tp=2: name 2 NPU(s), e.g. --device npu:0-1"),
        ((1, "npu:5"), "npu:5 not available on this node; see `rbln-eval doctor`, or choose others"),
    ]
    reports = [node(8), node(8), node(2), node(8), node(8, unavailable=(5,))]
    for (args, message), report in zip(cases, reports):
        with pytest.raises(DevicePlacementError) as caught:
            check_devices(*args, report=report)
        assert caught.value.render(flag) == message


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_hub_is_found_in_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    assert probe_hub() == "connection refused"
    assert time.monotonic() - started < 5


def test_network_faults_are_named_through_their_causes() -> None:
    try:
        try:
            raise httpx.ConnectError("[Errno 111] Connection refused")
        except httpx.ConnectError as inner:
            raise RuntimeError("could not load") from inner
    except RuntimeError as outer:
        assert network_reason(outer) == "connection refused"
    assert network_reason(httpx.ConnectTimeout("timed out")) == "timed out"
    assert network_reason(ValueError("bad value")) is None
    message, code = describe_failure(ConnectionError("Couldn't reach 'x' on the Hub (Connection refused)"))
    assert code == 2 and message.startswith("cannot reach the Hub at ") and "HF_DATASETS_OFFLINE=1" in message
    assert describe_failure(KeyError("boom")) == ("KeyError: 'boom' (run with --debug or RBLN_EVAL_DEBUG=1 for the traceback)", 1)
    assert describe_failure(RblnEvalError("fix it")) == ("fix it", 2)
