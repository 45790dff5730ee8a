"""Sweeps on this machine: one compile per key, cells equal to plain runs, resume without device work,
a failing compile failing only its cells, and the reports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import rbln_eval.sim as sim
from sweephelpers import TASKS, cell_samples, metrics, two_models, write_plan

from rbln_eval.api import open_lm
from rbln_eval.evaluation.evaluate import EvalOptions, evaluate
from rbln_eval.store import Store
from rbln_eval.sweep import PlanError, load_plan, run_sweep


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sweep")
    plan = load_plan(write_plan(root / "plan.yaml", two_models()))
    store = Store(root / "store")
    stages: list[tuple[str, int, int]] = []
    result = run_sweep(plan, root / "out", store, progress=lambda *stage: stages.append(stage))
    return {"root": root, "plan": plan, "store": store, "result": result, "stages": stages}


def test_each_key_compiles_once_and_every_cell_is_scored(swept: dict) -> None:
    result = swept["result"]
    assert result.compiled == 2  # three entries, two keys
    assert len(list((swept["store"].root / "bundles").iterdir())) == 2
    assert [c.status for c in result.cells] == ["scored"] * 12
    assert str(result.counts) == "12 scored, 0 reused, 0 failed"
    digests = {c.model: c.digest for c in result.cells}
    assert digests["llama-bs2"] == digests["llama-bs2-again"] != digests["llama-last"]
    assert ("compiles", 2, 2) in swept["stages"] and ("cells", 12, 12) in swept["stages"]


def test_cells_equal_plain_runs_sample_by_sample(swept: dict) -> None:
    result, output = swept["result"], swept["result"].output
    for name in ("llama-bs2", "llama-last"):
        digest = next(c.digest for c in result.cells if c.model == name)
        bundle = swept["store"].resolve(digest)
        for task in TASKS:
            options = EvalOptions(tasks=[task["task"]], limit=task["limit"], include_path=task["include_path"], log_samples=True)
            with open_lm(bundle) as lm:
                plain = evaluate(lm, options)
            expected = {k: v for k, v in plain["results"][task["task"]].items() if isinstance(v, float) and "_stderr" not in k}
            cell = next(c for c in result.cells if c.model == name and c.task == task["task"])
            assert {k: v for k, v in cell.metrics.items() if k in expected} == expected, (name, task["task"])
            rows = sorted(plain["samples"][task["task"]], key=lambda r: r["doc_id"])
            assert cell_samples(output, name, task["task"]) == json.loads(json.dumps([r["resps"] for r in rows], default=str))


def test_summary_and_reports(swept: dict) -> None:
    output = swept["result"].output
    summary = json.loads((output / "summary.json").read_text())
    assert summary["counts"] == {"scored": 12, "reused": 0, "failed": 0} and summary["compiled"] == 2
    assert [(c["model"], c["task"], c["status"]) for c in summary["cells"]][:2] == [
        ("llama-bs2", "demo_mc", "scored"), ("llama-bs2", "demo_gen", "scored"),
    ]
    for cell in summary["cells"]:
        assert cell["digest"] and cell["seconds"] > 0 and cell["devices"] == [0] and cell["metrics"]
    markdown = (output / "summary.md").read_text()
    assert "| model | demo_mc | demo_gen | demo_cloze | demo_ppl |" in markdown
    assert "12 cells: 12 scored, 0 reused, 0 failed; 2 bundle(s) compiled." in markdown
    page = (output / "report.html").read_text()
    assert "<svg" in page and "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    (output / "summary.md").unlink()
    result = subprocess.run([sys.executable, "-m", "rbln_eval", "report", str(output)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (output / "summary.md").read_text() == markdown


def test_resume_compiles_nothing_and_makes_no_device_call(swept: dict) -> None:
    before = sim.counters()
    again = run_sweep(swept["plan"], swept["result"].output, swept["store"])
    assert sim.counters() == before
    assert again.compiled == 0 and [c.status for c in again.cells] == ["reused"] * 12
    summary = json.loads((again.output / "summary.json").read_text())
    assert summary["counts"] == {"scored": 0, "reused": 12, "failed": 0} and str(again.counts) == "0 scored, 12 reused, 0 failed"
    assert {c["status"] for c in summary["cells"]} == {"reused"}
    assert "12 cells: 0 scored, 12 reused, 0 failed; 0 bundle(s) compiled." in (again.output / "summary.md").read_text()
    assert metrics(again) == metrics(swept["result"])
    forced = run_sweep(load_plan(write_plan(swept["root"] / "one.yaml", two_models()[:1], TASKS[:1])), swept["root"] / "out", swept["store"], force=True)
    assert [c.status for c in forced.cells] == ["scored"]
    assert sum(v["calls"] for v in sim.counters().values()) > sum(v["calls"] for v in before.values())


def test_a_failing_compile_fails_its_cells_only_and_exits_1(swept: dict, tmp_path: Path) -> None:
    models = two_models()[:1] + [{**two_models()[0], "name": "broken", "rbln_config": {"no_such_option": 1}}]
    plan = write_plan(tmp_path / "plan.yaml", models, TASKS[:2])
    env = {**os.environ, "RBLN_EVAL_SIMULATE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "rbln_eval", "sweep", str(plan), "--output", str(tmp_path / "out"), "--store", str(swept["store"].root)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    status = {(c["model"], c["task"]): (c["status"], c["error"]) for c in summary["cells"]}
    assert status[("llama-bs2", "demo_mc")] == ("scored", None) and status[("llama-bs2", "demo_gen")] == ("scored", None)
    for task in ("demo_mc", "demo_gen"):
        state, error = status[("broken", task)]
        assert state == "failed" and error.startswith("compile failed: ValueError: Unexpected arguments"), error
    assert "failed: broken × demo_mc: compile failed: ValueError: Unexpected arguments" in result.stderr
    assert "4 cells: 2 scored, 0 reused, 2 failed; 0 bundle(s) compiled" in result.stderr
    assert summary["counts"] == {"scored": 2, "reused": 0, "failed": 2}


def test_bad_plans_are_refused_with_one_line(tmp_path: Path) -> None:
    cases = {
        "models: []\ntasks: [demo_mc]\n": "needs a list of models and a list of tasks",
        "models: [{model: x, colour: red}]\ntasks: [demo_mc]\n": "unknown field(s) colour",
        "models: [x]\ntasks: [{task: demo_mc, limit: -1}]\n": "limit must be a non-negative number, got -1",
        "models: [x, x]\ntasks: [demo_mc]\n": "model names repeat",
        "models: [{model: x, tp: -2}]\ntasks: [demo_mc]\n": "models[0]: tp must be a positive integer, got -2",
        "models: [x\n": "is not valid YAML",
    }
    for text, expected in cases.items():
        path = tmp_path / "plan.yaml"
        path.write_text(text)
        with pytest.raises(PlanError, match=None) as caught:
            load_plan(path)
        assert expected in str(caught.value), (text, str(caught.value))

    plan = write_plan(tmp_path / "good.yaml", two_models()[:1], TASKS[:1])
    result = subprocess.run(
        [sys.executable, "-m", "rbln_eval", "sweep", str(plan), "--output", str(tmp_path / "out"),
         "--store", str(tmp_path / "store"), "--node-store", str(tmp_path / "nodes")],
        capture_output=True, text=True, env={**os.environ, "RBLN_EVAL_SIMULATE": "1"}, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --node-store is where NPU nodes of a Ray cluster keep bundles: pass --ray too, or drop it"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "nodes").exists()


def test_reference_hf_records_the_references_scores_and_deltas(swept: dict, tmp_path: Path) -> None:
    import yaml

    plan_path = write_plan(tmp_path / "plan.yaml", two_models()[:1], [TASKS[0], TASKS[3]])
    plan_path.write_text(yaml.safe_dump({**yaml.safe_load(plan_path.read_text()), "reference": "hf"}))
    result = run_sweep(load_plan(plan_path), tmp_path / "out", swept["store"])
    by_task = {c.task: c for c in result.cells}
    mc, ppl = by_task["demo_mc"], by_task["demo_ppl"]
    assert mc.status == ppl.status == "scored"
    assert set(mc.reference) >= {"acc,none", "acc_norm,none"} and mc.deltas["acc,none"] == 0.0
    assert mc.reference["acc,none"] == mc.metrics["acc,none"]
    assert abs(ppl.deltas["word_perplexity,none"]) <= 1e-4 * ppl.reference["word_perplexity,none"]
    assert "Δ against the HF reference" in (tmp_path / "out" / "summary.md").read_text()
    with pytest.raises(PlanError, match="reference must be hf"):
        plan_path.write_text(plan_path.read_text().replace("reference: hf", "reference: gpu"))
        load_plan(plan_path)
