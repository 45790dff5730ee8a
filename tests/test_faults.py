"""Faults at the edges, through the CLI: an unreachable Hub, empty HF caches, bad options and devices, and
failures from dependencies. Each ends in one line and an exit status, with the store and the output
directory unchanged, and (for ``run``) before any bundle is loaded or compiled."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import tree_snapshot
from lmhelpers import MODEL_DIRS, TASKS_DIR, shared_bundle
from rbln_eval.store import Bundle
from remotehelpers import cli
from taskhelpers import write_task, write_tiny_hub_task


def closed_port() -> int:
    """A local port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def error_line(result: Any, status: int) -> str:
    """The one ``error:`` line of a failed command (no traceback), checking its exit status."""
    assert result.returncode == status, (result.stdout[-2000:], result.stderr[-3000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return shared_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fault-tasks")
    write_tiny_hub_task(root)
    write_task(root, "tiny_broken", {"dataset_path": "json", "custom_dataset": "!function broken.load"})
    (root / "broken.py").write_text("def load(**kwargs):\n    raise RuntimeError('the data server returned garbage')\n")
    return root


@pytest.fixture
def world(tmp_path: Path, bundle: Bundle) -> dict[str, Any]:
    """Environment of a machine whose Hub endpoint refuses connections, with an empty HF cache."""
    port = closed_port()
    env = {
        "HF_ENDPOINT": f"http://127.0.0.1:{port}", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    store = bundle.path.parent.parent
    out = tmp_path / "out"
    return {"env": env, "endpoint": env["HF_ENDPOINT"], "store": store, "out": out, "before": tree_snapshot(store)}


def unchanged(world: dict[str, Any]) -> None:
    assert tree_snapshot(world["store"]) == world["before"]
    assert not world["out"].exists()


def run(world: dict[str, Any], *args: str, env: dict[str, str] | None = None):
    return cli("run", *args, "--store", str(world["store"]), "--output_path", str(world["out"]), env={**world["env"], **(env or {})})


def test_compile_with_the_hub_unreachable(world: dict[str, Any], tmp_path: Path) -> None:
    store = tmp_path / "new-store"
    started = time.monotonic()
    result = cli("compile", "gpt2", "--tp", "4", "--store", str(store), env=world["env"])
    assert time.monotonic() - started < 30
    assert error_line(result, 2) == (
        f"error: cannot reach the Hub at {world['endpoint']} (connection refused) to resolve gpt2@main, and it is not "
        "in the HF cache: connect this machine, or set HF_HUB_OFFLINE=1 to use the HF cache (fill it with "
        "`rbln-eval prefetch` on a connected machine and copy it over)"
    )
    offline = cli("compile", "gpt2", "--tp", "4", "--store", str(store), env={**world["env"], "HF_HUB_OFFLINE": "1"})
    assert error_line(offline, 2) == (
        "error: cannot resolve gpt2@main offline: it is not in the HF cache (HF_HUB_OFFLINE is set); run "
        "`rbln-eval prefetch --model gpt2` on a connected machine and copy the HF cache, or pass a commit sha"
    )
    debug = cli("compile", "gpt2", "--store", str(store), "--debug", env=world["env"])
    assert debug.returncode == 2 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith(f"error: cannot reach the Hub at {world['endpoint']}")
    assert tree_snapshot(store) == {}


def test_run_with_the_hub_unreachable_fails_in_seconds(world: dict[str, Any], bundle: Bundle, tasks_dir: Path) -> None:
    started = time.monotonic()
    result = run(world, "--artifact", bundle.digest[:8], "--tasks", "tiny_hub", "--include_path", str(tasks_dir))
    elapsed = time.monotonic() - started
    assert error_line(result, 2) == (
        f"error: cannot reach the Hub at {world['endpoint']} (connection refused) to load dataset org/tiny of task(s) "
        "tiny_hub: connect this machine, or set HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 to use the HF cache (fill it "
        "with `rbln-eval prefetch` on a connected machine and copy it over)"
    )
    assert elapsed < 20, elapsed  # datasets alone retries for about a minute
    assert "Retry" not in result.stderr and "loaded" not in result.stderr
    unchanged(world)


def test_run_offline_with_the_dataset_not_cached(world: dict[str, Any], bundle: Bundle, tasks_dir: Path) -> None:
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = run(world, "--artifact", bundle.digest[:8], "--tasks", "tiny_hub", "--include_path", str(tasks_dir), env=offline)
    assert error_line(result, 2) == (
        "error: dataset org/tiny of task(s) tiny_hub is not in the HF cache and HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is "
        "set: run `rbln-eval prefetch --tasks tiny_hub` on a connected machine and copy the HF cache"
    )
    assert "loaded" not in result.stderr
    unchanged(world)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num_fewshot", "-1"], "error: --num_fewshot must be 0 or more, got -1"),
        (["--limit", "-1"], "error: --limit must be positive (documents per task, or a fraction below 1), got -1"),
        (
            ["--gen_kwargs", "temperature"],
            "error: argument --gen_kwargs: expected `key=value`, got 'temperature'",  # lm_eval's parser, as `lm-eval run`
        ),
    ],
    ids=["negative-fewshot", "negative-limit", "gen-kwargs"],
)
def test_bad_options_fail_before_anything_loads(world: dict[str, Any], bundle: Bundle, args: list[str], message: str) -> None:
    result = run(world, "--artifact", bundle.digest[:8], "--tasks", "demo_cloze", "--include_path", TASKS_DIR, "--limit", "2", *args)
    assert error_line(result, 2) == message
    assert "loaded" not in result.stderr
    unchanged(world)


@pytest.mark.parametrize(
    ("args", "devices", "message"),
    [
        (["--device", "npu:99"], "8", "error: --device npu:99: this node has 8 NPU(s) (npu:0-7), there is no npu:99; see `rbln-eval doctor`"),
        (["--device", "0-1"], "8", "error: --device 0-1 names 2 NPU(s), the bundle is compiled for tp=1: name 1 NPU(s), e.g. --device npu:0"),
        (
            ["--data-parallel", "3"], "2",
            "error: 3 replica(s) of tp=1 need 3 NPUs, this node has 2 usable: lower --data-parallel or compile with a smaller --tp",
        ),
    ],
    ids=["missing-device", "device-vs-tp", "too-few-npus"],
)
def test_bad_devices_fail_before_the_bundle_loads(
    world: dict[str, Any], bundle: Bundle, args: list[str], devices: str, message: str
) -> None:
    result = run(
        world, "--artifact", bundle.digest[:8], "--tasks", "demo_cloze", "--include_path", TASKS_DIR, "--limit", "2", *args,
        env={"RBLN_EVAL_SIM_DEVICES": devices},
    )
    assert error_line(result, 2) == message
    assert "loaded" not in result.stderr and "replicas" not in result.stderr
    unchanged(world)


def test_bad_device_fails_before_compiling(world: dict[str, Any], tmp_path: Path) -> None:
    store = tmp_path / "empty-store"
    result = cli(
        "run", "--model", str(MODEL_DIRS["causal"]), "--batch-size", "3", "--tasks", "demo_cloze", "--include_path", TASKS_DIR,
        "--device", "npu:8", "--store", str(store), env=world["env"],
    )
    assert error_line(result, 2) == "error: --device npu:8: this node has 8 NPU(s) (npu:0-7), there is no npu:8; see `rbln-eval doctor`"
    assert "compiling" not in result.stderr
    assert tree_snapshot(store) == {}


def test_an_unexpected_fault_is_one_line_and_exit_1(world: dict[str, Any], bundle: Bundle, tasks_dir: Path) -> None:
    args = ["--artifact", bundle.digest[:8], "--tasks", "tiny_broken", "--include_path", str(tasks_dir)]
    result = run(world, *args)
    assert error_line(result, 1) == (
        "error: RuntimeError: the data server returned garbage (run with --debug or RBLN_EVAL_DEBUG=1 for the traceback)"
    )
    debug = run(world, *args, env={"RBLN_EVAL_DEBUG": "1"})
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1] == "error: RuntimeError: the data server returned garbage"
    unchanged(world)


def test_runtime_creation_fault_names_the_devices(bundle: Bundle) -> None:
    from rbln_eval.execution.loader import RuntimeCreationError, load_bundle

    with pytest.raises(RuntimeCreationError) as caught:
        load_bundle(bundle, device=[6, 9])
    message = str(caught.value)
    assert message.startswith(f"cannot create the runtimes of bundle {bundle.digest[:12]} on npu:6,9: ")
    assert message.endswith(": check the NPUs with `rbln-smi` (or `rbln-eval doctor`)")
    assert "\n" not in message and caught.value.exit_code == 1
