"""Shared by the remote tests: one compiled demo bundle per session, its reference scores, a CLI runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lmhelpers import MODEL_DIRS, TASKS_DIR, demo_bundle
from rbln_eval.store import Bundle

TOKEN = "hf_remotes_test_token_4f1c2b9a"
TASKS = "demo_cloze"
LIMIT = "4"
BATCH = 2



def cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``rbln-eval`` on the simulator; the test token must never show up in its output."""
    full = {**os.environ, "RBLN_EVAL_SIMULATE": "1", "COLUMNS": "200", **(env or {})}
    result = subprocess.run([sys.executable, "-m", "rbln_eval", *args], capture_output=True, text=True, env=full, timeout=timeout)
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    return result


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    return result


def one_line_exit_2(result: subprocess.CompletedProcess, expected: str) -> str:
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert expected in errors[0], errors[0]
    return errors[0]


def run_args(store: Path, output: Path) -> list[str]:
    return ["--tasks", TASKS, "--include_path", TASKS_DIR, "--limit", LIMIT, "--store", str(store), "--output_path", str(output)]


def results_file(directory: Path) -> dict[str, Any]:
    files = sorted(directory.rglob("results_*.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text())


def scores(results: dict[str, Any]) -> dict[str, Any]:
    return {task: {k: v for k, v in m.items() if k.startswith(("acc", "perplexity"))} for task, m in results["results"].items()}


def origin(tmp_path_factory: pytest.TempPathFactory) -> tuple[Bundle, dict[str, Any]]:
    """The demo causal bundle (compiled once per session) and its scores from ``run --artifact``."""
    from rbln_eval import sim

    sim.activate()
    root = tmp_path_factory.getbasetemp() / "remotes-origin"
    bundle = demo_bundle(str(root / "store"), "causal", BATCH)
    reference = root / "reference.json"
    if not reference.exists():
        out = root / "results"
        ok(cli("run", "--artifact", bundle.digest, *run_args(root / "store", out)))
        reference.write_text(json.dumps(scores(results_file(out))))
    return bundle, json.loads(reference.read_text())


def model_dir() -> str:
    return str(MODEL_DIRS["causal"])
