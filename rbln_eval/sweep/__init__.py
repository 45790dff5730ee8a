"""Sweeps: models × compile configs × tasks, compiled once per key and scored cell by cell.

A plan (YAML) lists models (an id or path, a revision, and ``compile``'s options) and tasks (with
``num_fewshot``, ``limit``, ``include_path``, ``gen_kwargs``)::

    models:
      - model: meta-llama/Llama-3.2-1B
        tp: 4
        batch_size: 4
      - {model: ./my-model, name: mine, logits: last}
    tasks:
      - demo_mc
      - {task: lambada_openai, limit: 200, num_fewshot: 0}
    reference: hf        # optional: each cell also scored by the model's HF reference, with the deltas

The sweep keys every model and compiles each distinct key that neither the store nor the remotes have,
once; then it scores each (bundle, task) cell — here one after the other, or on Ray longest first, each
cell a task holding ``{"RBLN": tp}`` that Ray places on free NPUs, taking more replicas while NPUs stay
free (:class:`~rbln_eval.execution.pool.Growing`), run again elsewhere if its node dies. A cell whose
results exist for the same bundle, task settings and lm_eval version is reused (``force`` scores it again).
A failed compile fails its cells, with the reason; the other cells go on. A cell is scored, reused or
failed: the same words and numbers in the progress line, ``summary.json`` and the reports. Output::

    DIR/cells/<cell>/results.json   lm_eval's results of one cell (and samples_<task>.jsonl when asked)
    DIR/summary.json                the counts, and every cell: model, digest, task, metrics, status, seconds, node, devices
    DIR/summary.md, DIR/report.html the models × tasks table (the HTML with a chart, viewable offline)
"""

from rbln_eval.sweep.cells import (
    CELL_RESULTS,
    FAILED,
    REUSED,
    SCORED,
    Cell,
    cell_key,
    evaluate_cell,
)
from rbln_eval.errors import PlanError
from rbln_eval.sweep.plan import ModelEntry, Plan, TaskEntry, load_plan
from rbln_eval.sweep.run import run_sweep
from rbln_eval.sweep.runners import LocalRunner, RayRunner, Runner
from rbln_eval.sweep.source import BundleSource
from rbln_eval.sweep.summary import SUMMARY_NAME, CellCounts, SweepResult, write_summary

__all__ = [
    "CELL_RESULTS", "FAILED", "REUSED", "SCORED", "SUMMARY_NAME", "BundleSource", "Cell", "CellCounts",
    "LocalRunner", "ModelEntry", "Plan", "PlanError", "RayRunner", "Runner", "SweepResult", "TaskEntry",
    "cell_key", "evaluate_cell", "load_plan", "run_sweep", "write_summary",
]
