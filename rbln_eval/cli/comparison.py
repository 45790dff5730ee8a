"""The ``compare`` report as tables that keep every number and the verdict whole at the console's width."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from rich.console import Console

from rbln_eval.cli.tables import Column, fitted_table

if TYPE_CHECKING:
    from rbln_eval.evaluation.compare import ComparisonReport


def whole(value: Optional[float]) -> Optional[float]:
    """``8.0`` as ``8`` (a document count); fractions and None unchanged."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


#: The comparison at any width: a row per (task, metric), then a row per task with its requests and verdict.
METRIC_COLUMNS = (Column("task"), Column("metric"), Column("rbln", "number"), Column("hf", "number"), Column("Δ", "number"))
REQUEST_COLUMNS = (
    Column("task"), Column("max |Δlp|", "number"), Column("mean |Δlp|", "number"),
    Column("argmax agree", "number"), Column("gen agree", "number"),
)
#: Dataset tasks: the outputs' |Δ| (logits) and the share of examples predicted alike.
OUTPUT_COLUMNS = (Column("task"), Column("max |Δlogit|", "number"), Column("mean |Δlogit|", "number"), Column("same pred", "number"))
VERDICT_COLUMN = Column("verdict", "id")


def number(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_comparison(report: "ComparisonReport", console: Console) -> None:
    """The report as two tables that keep every number and the verdict whole at ``console``'s width."""
    tolerance = "" if report.tolerance is None else f", tolerance: {report.tolerance:g}"
    console.print(
        f"rbln {report.bundle[:12]} ({report.target}) vs {report.reference['model']} {report.reference['pretrained']} "
        f"({report.reference['dtype']}, {report.reference['device']}), limit: {whole(report.limit)}, "
        f"num_fewshot: {report.num_fewshot}{tolerance}",
        markup=False,
    )
    metric_rows = [
        [task.task, metric.metric.replace(",none", ""), number(metric.rbln, ".6g"), number(metric.reference, ".6g"),
         number(metric.delta, "+.2e")]
        for task in report.tasks for metric in task.metrics
    ]
    outputs = any(task.max_abs_output_delta is not None for task in report.tasks)  # dataset tasks: logits, predictions
    request_rows = [
        ([task.task, number(task.max_abs_output_delta, ".2e"), number(task.mean_abs_output_delta, ".2e"),
          number(task.argmax_agreement, ".1%")] if outputs else
         [task.task, number(task.max_abs_logprob_delta, ".2e"), number(task.mean_abs_logprob_delta, ".2e"),
          number(task.argmax_agreement, ".1%"), number(task.generation_agreement, ".1%")])
        + ([] if report.tolerance is None else ["ok" if task.passed else "FAIL"])
        for task in report.tasks
    ]
    request_columns = (OUTPUT_COLUMNS if outputs else REQUEST_COLUMNS) + (() if report.tolerance is None else (VERDICT_COLUMN,))
    for columns, rows in ((METRIC_COLUMNS, metric_rows), (request_columns, request_rows)):
        if not rows:
            continue
        table, shared = fitted_table(console, columns, rows)
        console.print()
        for header, value in shared:
            console.print(f"{header} (every row): {value}", markup=False)
        console.print(table)
