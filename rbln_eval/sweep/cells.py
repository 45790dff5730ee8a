"""Cells: one (model, task) of a sweep — scored, reused from an earlier run, or failed — and scoring one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rbln_eval.api import GrowingPool, evaluate_bundle, open_executor
from rbln_eval.errors import RblnEvalError
from rbln_eval.identity import package_version
from rbln_eval.store import Bundle
from rbln_eval.sweep.source import BundleSource
from rbln_eval.util.atomic import write_atomic
from rbln_eval.util.hashing import sha256_json
from rbln_eval.util.logs import quiet_lm_eval

#: What became of a cell: the words of the progress line, ``summary.json`` and the reports.
PENDING, SCORED, REUSED, FAILED = "pending", "scored", "reused", "failed"
#: lm_eval's results of a cell, in its folder; written last, so its presence means the cell is done.
CELL_RESULTS = "results.json"
#: The cell's key, timing and placement beside its results (what a later run reuses).
CELL_RECORD = "cell.json"


@dataclass
class Cell:
    """One (model, task) of the sweep and what became of it."""

    model: str
    task: str
    settings: dict[str, Any]
    digest: str | None = None
    key: str | None = None  # identity of the cell's results: bundle, task settings, lm_eval version
    status: str = PENDING  # scored | reused | failed
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    node: str | None = None
    devices: list[int] = field(default_factory=list)
    replicas: list[dict[str, Any]] = field(default_factory=list)  # on Ray: every replica that served the cell
    error: str | None = None
    reference: dict[str, Any] = field(default_factory=dict)  # the HF reference's metrics (plan ``reference: hf``)
    deltas: dict[str, Any] = field(default_factory=dict)  # ours minus the reference's, per metric
    log_samples: bool = False  # write the cell's samples beside its results

    @property
    def directory(self) -> str:
        return f"{self.model}__{self.task}".replace("/", "_")

    def folder(self, output: Path) -> Path:
        return output / "cells" / self.directory

    def mark_scored(self, outcome: dict[str, Any]) -> None:
        """Take what :func:`evaluate_cell` returned."""
        self.status, self.metrics, self.seconds = SCORED, outcome["metrics"], round(outcome["seconds"], 3)
        self.node, self.devices = outcome["node"], outcome["devices"]
        self.reference, self.deltas = outcome["reference"], outcome["deltas"]
        self.replicas = outcome.get("replicas", [])

    def mark_failed(self, error: str) -> None:
        self.status, self.error = FAILED, error

    def save(self, output: Path) -> None:
        """Write what a later run needs to reuse the cell's results."""
        record = {
            "key": self.key, "seconds": self.seconds, "node": self.node, "devices": self.devices,
            "replicas": self.replicas, "reference": self.reference, "deltas": self.deltas,
        }
        write_atomic(self.folder(output) / CELL_RECORD, json.dumps(record))

    def reuse(self, output: Path) -> bool:
        """Mark the cell reused if ``output`` holds its results for the same key."""
        folder = self.folder(output)
        try:
            saved = json.loads((folder / CELL_RECORD).read_text())
            results = json.loads((folder / CELL_RESULTS).read_text())
        except (OSError, ValueError):
            return False
        if saved.get("key") != self.key:
            return False
        self.status = REUSED
        self.metrics = cell_metrics(results, self.task)
        self.seconds = float(saved.get("seconds") or 0.0)
        self.node, self.devices = saved.get("node"), list(saved.get("devices") or [])
        self.reference, self.deltas = dict(saved.get("reference") or {}), dict(saved.get("deltas") or {})
        self.replicas = list(saved.get("replicas") or [])
        return True


def cell_key(digest: str, settings: dict[str, Any]) -> str:
    """What a cell's scores depend on besides the bundle: the task's settings and lm_eval's version."""
    return sha256_json({"bundle": digest, "task": settings, "lm_eval": package_version("lm-eval")})


def cell_metrics(results: dict[str, Any], task: str) -> dict[str, Any]:
    """The task's numeric metrics, without their standard errors."""
    scores = results.get("results", {}).get(task, {})
    return {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in k}


def evaluate_cell(
    bundle: Bundle | BundleSource, settings: dict[str, Any], output: str, log_samples: bool, *,
    on_ray: bool = False, replicas: Any = None,
) -> dict[str, Any]:
    """Score one cell and write its results into the folder ``output``.

    Here: on one replica in this process. ``on_ray`` (a Ray task holding ``{"RBLN": tp}``): on a replica in
    this process (on the task's ``RBLN_DEVICES``), joined by more replicas (Ray actors) while NPUs are free;
    ``replicas``, a :class:`~rbln_eval.sweep.runners.ReplicaCount` actor, hears how many are up, and a
    :class:`BundleSource` says where each replica's node gets the bundle.
    """
    from rbln_eval.evaluation.evaluate import EvalOptions, summary_json
    from rbln_eval.evaluation.datasets.spec import split_tasks
    from rbln_eval.evaluation.tasks import task_manager_for
    from rbln_eval.execution.devices import visible_npus
    from rbln_eval.execution.pool import ray_node_id

    quiet_lm_eval()  # a Ray task or worker process has not been through the CLI's set-up
    source = bundle if isinstance(bundle, BundleSource) else None
    loaded = source.fetch() if source is not None else bundle
    assert isinstance(loaded, Bundle)
    tp = loaded.key.tensor_parallel
    options = EvalOptions(
        tasks=[settings["task"]], num_fewshot=settings.get("num_fewshot"), limit=settings.get("limit"),
        include_path=settings.get("include_path"), gen_kwargs=settings.get("gen_kwargs"), log_samples=True,
    )
    started = time.monotonic()
    dataset_tasks, _ = split_tasks(options.tasks, options.include_path)
    manager = None if dataset_tasks else task_manager_for(options.tasks, options.include_path)
    if on_ray:
        report = (lambda count: replicas.set.remote(output, count)) if replicas is not None else None
        executor = open_executor(loaded, growing=GrowingPool(source=source, on_change=report))
    else:
        executor = open_executor(loaded, device=(visible_npus() or [])[:tp] or None)
    results = evaluate_bundle(loaded, options, manager, executor=executor)
    if results is None:
        raise RblnEvalError(f"lm_eval returned no results for {settings['task']}")
    seconds = time.monotonic() - started
    placed = list(executor.groups[0]) if executor.groups else list(range(tp))
    served = executor.describe().get("workers", []) if on_ray else []
    reference: dict[str, Any] = {}
    deltas: dict[str, Any] = {}
    if settings.get("reference") == "hf":
        max_length = results["config"]["rbln"]["max_length"]
        reference, deltas = reference_scores(loaded, options, manager, results, max_length)
    samples = results.pop("samples", {})
    folder = Path(output)
    folder.mkdir(parents=True, exist_ok=True)
    if log_samples:
        for task, rows in samples.items():
            lines = "".join(json.dumps(row, default=str, ensure_ascii=False) + "\n" for row in rows)
            write_atomic(folder / f"samples_{task}.jsonl", lines)
    write_atomic(folder / CELL_RESULTS, summary_json(results))  # last: its presence means the cell is done
    return {
        "metrics": cell_metrics(results, settings["task"]), "seconds": seconds, "devices": placed,
        "node": ray_node_id() if on_ray else None, "reference": reference, "deltas": deltas,
        "replicas": [{"node": w.get("node"), "devices": w["devices"], "requests": w["requests"]} for w in served],
    }


def reference_scores(
    bundle: Bundle, options: Any, manager: Any, ours: dict[str, Any], max_length: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The HF reference's metrics on the same samples, and ours minus theirs (as ``rbln-eval compare``)."""
    from lm_eval import simple_evaluate

    from rbln_eval.evaluation.compare import compare_results, reference_lm
    from rbln_eval.evaluation.evaluate import sample_selection

    ref = simple_evaluate(model=reference_lm(bundle, max_length=max_length), **sample_selection(options, manager), log_samples=True)
    if ref is None:
        raise RblnEvalError("the reference evaluation returned no results")
    task = options.tasks[0]
    compared = next(c for c in compare_results(ours, ref, None) if c.task == task)
    return (
        {m.metric: m.reference for m in compared.metrics},
        {m.metric: m.delta for m in compared.metrics},
    )
