"""Compile once, run warm, and the three ways in (CLI run, Python, lm_eval CLI) agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lmhelpers import MODEL_DIRS, TASKS_DIR

TASKS = "demo_cloze,demo_mc"


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RBLN_EVAL_SIMULATE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rbln_eval", *args], capture_output=True, text=True, env=env, timeout=600)


def results_file(directory: Path) -> dict:
    files = sorted(directory.rglob("results_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def scores(results: dict) -> dict:
    return {task: {k: v for k, v in metrics.items() if k.startswith(("acc", "perplexity"))} for task, metrics in results["results"].items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("entry")
    store = str(root / "store")
    model = str(MODEL_DIRS["causal"])
    common = ["--tasks", TASKS, "--include_path", TASKS_DIR, "--limit", "6", "--store", store]
    cold = cli("run", "--model", model, "--batch-size", "2", *common, "--output_path", str(root / "cold"))
    warm = cli("run", "--model", model, "--batch-size", "2", *common, "--output_path", str(root / "warm"))
    return {"root": root, "store": store, "cold": cold, "warm": warm}


def test_warm_run_compiles_nothing(runs: dict) -> None:
    cold, warm = runs["cold"], runs["warm"]
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert "compiled in" in cold.stderr
    assert "nothing to compile" in warm.stderr and "compiling" not in warm.stderr
    first, second = results_file(runs["root"] / "cold"), results_file(runs["root"] / "warm")
    assert first["config"]["rbln"]["compiled_now"] is True
    assert second["config"]["rbln"]["compiled_now"] is False
    assert first["config"]["rbln"]["bundle_digest"] == second["config"]["rbln"]["bundle_digest"]
    assert scores(first) == scores(second)
    bundles = list((Path(runs["store"]) / "bundles").iterdir())
    assert len(bundles) == 1
    config = second["config"]["rbln"]
    assert config["key"]["compile"]["batch_size"] == 2 and config["key"]["target"] == "SIM-RBLN-CA25"
    assert config["toolchain"]["rebel-compiler"] == config["key"]["toolchain"]["rebel-compiler"]
    assert config["load_seconds"] > 0 and config["eval_seconds"] > 0 and config["requests_per_second"] > 0
    by_type = config["eval_seconds_by_request_type"]
    assert set(by_type) == {"loglikelihood"}  # cloze and multiple choice
    assert abs(sum(by_type.values()) - config["eval_seconds"]) <= 0.002
    assert set(config["device_counters"]) == {"prefill", "decode"} or set(config["device_counters"]) == {"prefill"}
    assert "Tasks" in warm.stdout and "demo_cloze" in warm.stdout


def test_three_entry_points_agree(runs: dict) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from rbln_eval.lm import RBLNLM

    reference = scores(results_file(runs["root"] / "warm"))
    digest = results_file(runs["root"] / "warm")["config"]["rbln"]["bundle_digest"]
    python = simple_evaluate(
        model=RBLNLM(artifact=digest[:10], store=runs["store"]), tasks=TASKS.split(","), limit=6,
        task_manager=TaskManager(include_path=TASKS_DIR, include_defaults=False),
    )
    assert scores(python) == reference
    out = runs["root"] / "lm-eval"
    result = cli(
        "lm-eval", "run", "--model", "rbln", "--model_args", f"artifact={digest},store={runs['store']}",
        "--tasks", TASKS, "--include_path", TASKS_DIR, "--limit", "6", "--output_path", str(out),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    via_lm_eval = results_file(out)
    assert scores(via_lm_eval) == reference
    assert via_lm_eval["config"]["rbln"]["bundle_digest"] == digest


def samples(results: dict) -> dict:
    """Every sample's responses, per task, in document order."""
    return {
        task: [(s["doc_id"], s["filtered_resps"]) for s in sorted(rows, key=lambda s: s["doc_id"])]
        for task, rows in results["samples"].items()
    }


def test_data_parallel_2_from_python_and_model_args_scores_as_one_replica(runs: dict) -> None:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from rbln_eval.lm import RBLNLM

    digest = results_file(runs["root"] / "warm")["config"]["rbln"]["bundle_digest"]
    manager = TaskManager(include_path=TASKS_DIR, include_defaults=False)

    def evaluate(**model_args: object) -> dict:
        with RBLNLM(artifact=digest, store=runs["store"], **model_args) as lm:
            return simple_evaluate(model=lm, tasks=TASKS.split(","), limit=6, log_samples=True, task_manager=manager)

    single = evaluate(device="npu:0")
    assert single["config"]["rbln"].get("data_parallel") is None
    python = evaluate(data_parallel=2)
    assert python["config"]["rbln"]["data_parallel"] == 2
    assert [w["devices"] for w in python["config"]["rbln"]["workers"]] == [[0], [1]]
    assert scores(python) == scores(single)
    assert samples(python) == samples(single)

    out = runs["root"] / "lm-eval-dp"
    result = cli(
        "lm-eval", "run", "--model", "rbln", "--model_args", f"artifact={digest},store={runs['store']},data_parallel=2",
        "--tasks", TASKS, "--include_path", TASKS_DIR, "--limit", "6", "--output_path", str(out), "--log_samples",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    via_lm_eval = results_file(out)
    assert via_lm_eval["config"]["rbln"]["data_parallel"] == 2
    assert sum(w["requests"] for w in via_lm_eval["config"]["rbln"]["workers"]) == single["config"]["rbln"]["requests"]
    assert scores(via_lm_eval) == scores(single)
    sample_files = sorted(out.rglob("samples_*.jsonl"))
    assert len(sample_files) == 2
    for path in sample_files:
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        rows = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda s: s["doc_id"])
        expected = [(doc, [[str(v) for v in resp] for resp in resps]) for doc, resps in samples(single)[task]]
        assert [(s["doc_id"], s["filtered_resps"]) for s in rows] == expected, task  # lm_eval writes values as text
