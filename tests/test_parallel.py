"""Data parallelism on the simulated node: K=1,2,4 replicas give identical results; a stalled worker is
left with little work; tp=4 replicas take devices 0-3 and 4-7; a dead worker fails the run with its devices
named."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import rbln_eval.sim as sim

try:
    sim.activate()
except sim.SimulatorConflictError:  # a real rebel SDK is installed: these tests need the simulator
    pytest.skip("a real rebel SDK is installed", allow_module_level=True)

from demomodels import model_dirs  # noqa: E402
from lmhelpers import TASKS_DIR, sample_values  # noqa: E402
from rbln_eval.api import CompileOptions  # noqa: E402
from rbln_eval.errors import ConfigError  # noqa: E402
from rbln_eval.api import open_lm  # noqa: E402
from rbln_eval.execution.pool import WorkerDiedError  # noqa: E402
from rbln_eval.store import Bundle, Store  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402

TASKS = ["demo_cloze", "demo_mc", "demo_ppl", "demo_gen"]
LIMIT = 4


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("parallel")


@pytest.fixture(scope="module")
def causal_dir(scratch: Path) -> Path:
    return model_dirs(str(scratch / "models"))["causal"]


@pytest.fixture(scope="module")
def bundle(scratch: Path, causal_dir: Path) -> Bundle:
    return compile_bundle(plan_compile(str(causal_dir), CompileOptions(batch_size=4)), Store(scratch / "store")).bundle


@pytest.fixture(scope="module")
def single_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each worker does here; tiny models run faster on one thread
    yield
    torch.set_num_threads(threads)


def evaluate(lm: Any) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=lm, tasks=TASKS, limit=LIMIT, log_samples=True,
        task_manager=TaskManager(include_path=TASKS_DIR, include_defaults=False),
    )


def scores(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {task: {k: v for k, v in r.items() if "_stderr" not in k} for task, r in results["results"].items()}


def test_one_two_and_four_replicas_score_identically(bundle: Bundle, single_thread: None) -> None:
    single = evaluate(open_lm(bundle, device=0))
    for k in (2, 4):
        with open_lm(bundle, devices=f"0-{k - 1}") as lm:
            results = evaluate(lm)
        assert scores(results) == scores(single), k
        assert sample_values(results) == sample_values(single), k
        info = results["config"]["rbln"]
        assert info["data_parallel"] == k
        assert [w["devices"] for w in info["workers"]] == [[i] for i in range(k)]
        assert sum(1 for w in info["workers"] if w["requests"]) >= 2
        for graph, counter in info["device_counters"].items():
            assert counter["calls"] == sum(w["device_counters"].get(graph, {}).get("calls", 0) for w in info["workers"])
        assert info["device_counters"]["prefill"]["calls"] == single["config"]["rbln"]["device_counters"]["prefill"]["calls"]


def test_a_stalled_worker_is_left_with_little_work(bundle: Bundle, single_thread: None) -> None:
    requests = [(None, [5 + i, 6, 7], [8]) for i in range(60)]
    expected = open_lm(bundle, device=0)._loglikelihood_tokens(requests, disable_tqdm=True)
    with open_lm(bundle, devices="0,1") as lm:
        slow = lm.executor.workers[1].process
        os.kill(slow.pid, signal.SIGSTOP)  # its first portion waits in the pipe until it resumes
        resume = threading.Timer(3.0, os.kill, (slow.pid, signal.SIGCONT))
        resume.start()
        try:
            scores = lm._loglikelihood_tokens(requests, disable_tqdm=True)
        finally:
            resume.cancel()
            os.kill(slow.pid, signal.SIGCONT)
        served = [worker.requests for worker in lm.executor.workers]
    assert scores == expected
    assert sum(served) == 60
    assert served[1] < 20, served  # an even split would have left it 30 to do after it resumed


class _Request:
    def __init__(self, args: tuple) -> None:
        self.args = args


def test_sampling_is_refused_before_any_device_work(bundle: Bundle) -> None:
    requests = [_Request(("The cat", {"until": ["."], "max_gen_toks": 8})) for _ in range(6)]
    requests.append(_Request(("The dog", {"do_sample": True, "temperature": 0.7})))
    with open_lm(bundle, devices="0,1") as lm:
        with pytest.raises(ConfigError, match=r"^the rbln model generates greedily; set do_sample=false"):
            lm._generate_until(requests, True)
        assert [worker.requests for worker in lm.executor.workers] == [0, 0]
        assert lm._generate_until(requests[:6], True) == [lm._generate_until(requests[:1], True)[0]] * 6


def test_a_dead_worker_fails_the_call_and_names_its_devices(bundle: Bundle) -> None:
    lm = open_lm(bundle, devices="2,5")
    try:
        victim = lm.executor.workers[1].process
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(30)
        requests = [(None, [5, 6, 7], [8]), (None, [9, 10], [11, 12]), (None, [13], [14])]
        with pytest.raises(WorkerDiedError, match=r"^worker 1 on npu:5 died during loglikelihood \(killed by SIGKILL\); .*no scores were reported$"):
            lm._loglikelihood_tokens(requests, disable_tqdm=True)
        assert not lm.executor.workers[0].process.is_alive()
        with pytest.raises(WorkerDiedError, match="not usable"):
            lm._loglikelihood_tokens(requests, disable_tqdm=True)
    finally:
        lm.close()


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RBLN_EVAL_SIMULATE": "1", "RBLN_EVAL_SIM_DEVICES": "8", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rbln_eval", *args], capture_output=True, text=True, env=env, timeout=600)


def test_tp4_bundle_with_data_parallel_2_runs_on_devices_0_3_and_4_7(scratch: Path, causal_dir: Path) -> None:
    store = scratch / "store"
    tp4 = compile_bundle(plan_compile(str(causal_dir), CompileOptions(batch_size=2, tp=4)), Store(store)).bundle
    common = ["run", "--artifact", tp4.digest, "--store", str(store), "--tasks", "demo_mc,demo_gen",
              "--include_path", TASKS_DIR, "--limit", "2"]
    result = cli(*common, "--data-parallel", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded 2 replicas of" in result.stderr and "on npu:0-3, npu:4-7" in result.stderr
    assert "replica 0 on npu:0-3:" in result.stderr and "replica 1 on npu:4-7:" in result.stderr
    assert "demo_mc" in result.stdout and "demo_gen" in result.stdout
