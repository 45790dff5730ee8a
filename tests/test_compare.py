"""`rbln-eval compare`: the demo bundles match their HF reference; a perturbed runtime fails the gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rbln_eval.sim as sim

try:
    sim.activate()
except sim.SimulatorConflictError:
    pytest.skip("a real rebel SDK is installed", allow_module_level=True)

from demomodels import model_dirs  # noqa: E402
from lmhelpers import TASKS_DIR  # noqa: E402
from rbln_eval.evaluation.compare import compare_task  # noqa: E402
from rbln_eval.api import CompileOptions  # noqa: E402
from rbln_eval.store import Store  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402

TASKS = "demo_cloze,demo_mc,demo_ppl,demo_gen"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    scratch = tmp_path_factory.mktemp("compare")
    dirs = model_dirs(str(scratch / "models"))
    store = Store(scratch / "store")
    causal = compile_bundle(plan_compile(str(dirs["causal"]), CompileOptions(batch_size=4)), store).bundle
    seq2seq = compile_bundle(plan_compile(str(dirs["seq2seq"]), CompileOptions(batch_size=2)), store).bundle
    return {"store": str(store.root), "causal": causal.digest, "seq2seq": seq2seq.digest, "scratch": str(scratch)}


def compare(setup: dict[str, str], model: str, output: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, "RBLN_EVAL_SIMULATE": "1", "COLUMNS": "200", "OMP_NUM_THREADS": "1", **(env or {})}
    args = ["compare", setup[model][:12], "--store", setup["store"], "--tasks", TASKS, "--include_path", TASKS_DIR,
            "--output", str(output), *extra]
    return subprocess.run([sys.executable, "-m", "rbln_eval", *args], capture_output=True, text=True, env=full, timeout=600)


@pytest.mark.parametrize("model,limit", [("causal", "4"), ("seq2seq", "2")])
def test_demo_bundles_match_their_reference(setup: dict[str, str], tmp_path: Path, model: str, limit: str) -> None:
    result = compare(setup, model, tmp_path / "report.json", "--limit", limit, "--tolerance", "1e-4")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is True and report["tolerance"] == 1e-4
    assert report["reference"]["model"] == "hf" and report["reference"]["device"] == "cpu"
    by_task = {task["task"]: task for task in report["tasks"]}
    assert sorted(by_task) == sorted(TASKS.split(","))
    for name, task in by_task.items():
        assert task["samples"] == int(limit) and task["failures"] == []
        for metric in task["metrics"]:
            assert abs(metric["delta"]) <= 1e-4 * max(1.0, abs(metric["reference"])), (name, metric)
    for name in ("demo_cloze", "demo_mc", "demo_ppl"):
        assert by_task[name]["logprobs"] > 0 and by_task[name]["max_abs_logprob_delta"] <= 1e-4 * 3000
    assert by_task["demo_mc"]["argmax_agreement"] == 1.0
    assert by_task["demo_gen"]["generation_agreement"] == 1.0
    assert "demo_mc" in result.stdout and "argmax agree" in result.stdout


def test_a_perturbed_runtime_exceeds_the_tolerance_and_names_the_task(setup: dict[str, str], tmp_path: Path) -> None:
    result = compare(
        setup, "causal", tmp_path / "report.json", "--limit", "3", "--tolerance", "1e-4",
        env={"RBLN_EVAL_SIM_PERTURB": "0.05"},
    )
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tolerance 0.0001 exceeded in ")
    for task in ("demo_cloze", "demo_mc", "demo_ppl"):
        assert f"{task} (max |Δ log-prob| " in last
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] is False
    assert {t["task"] for t in report["tasks"] if not t["passed"]} >= {"demo_cloze", "demo_mc", "demo_ppl"}


def test_compare_task_counts_disagreements() -> None:
    ours = [{"doc_id": 0, "resps": [[(-1.0, False)], [(-2.0, False)]]}, {"doc_id": 1, "resps": [[(-3.0, True)], [(-1.0, False)]]}]
    ref = [{"doc_id": 0, "resps": [[(-1.0, False)], [(-2.0, False)]]}, {"doc_id": 1, "resps": [[(-0.5, True)], [(-1.0, False)]]}]
    task = compare_task("t", "multiple_choice", {"acc,none": 0.5}, {"acc,none": 1.0}, ours, ref, tolerance=1e-4)
    assert task.argmax_agreement == 0.5
    assert task.max_abs_logprob_delta == 2.5 and task.mean_abs_logprob_delta == 2.5 / 4
    assert task.failures == ["max |Δ log-prob| 2.5", "acc,none differs by -0.5"]
    gen = compare_task("g", "generate_until", {}, {}, [{"doc_id": 0, "resps": [["a"]]}], [{"doc_id": 0, "resps": [["b"]]}], None)
    assert gen.generation_agreement == 0.0 and gen.passed
