"""Sweep reports: the models × tasks table as Markdown, and a self-contained HTML page with a chart.

Both are rendered from ``summary.json``, so ``rbln-eval report DIR`` can re-render them; the chart also
takes each metric's stderr and direction from the cells' lm_eval results under ``DIR/cells/`` when the
summary does not carry them. The HTML page needs no network access: its style and its chart (inline SVG,
:mod:`rbln_eval.sweep.chart`) are in the file.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from rbln_eval.errors import RblnEvalError
from rbln_eval.sweep.cells import CELL_RECORD, CELL_RESULTS
from rbln_eval.sweep.chart import Score, build_chart, chart_svg
from rbln_eval.sweep.summary import SUMMARY_NAME
from rbln_eval.util.atomic import write_atomic

#: Metrics shown first when a task reports several (the usual headline metric of each kind of task).
HEADLINE = ("acc", "exact_match", "word_perplexity", "perplexity", "acc_norm", "bits_per_byte", "top1", "wer", "mcc", "f1")

#: Metrics known to be better when lower, for results that do not say (lm_eval's ``higher_is_better``).
LOWER_IS_BETTER = frozenset({"perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte", "wer", "cer", "ter"})

#: Numbers lm_eval reports per task that are not scores.
_NOT_SCORES = ("sample_len",)


def headline_key(metrics: dict[str, Any]) -> str | None:
    """The key (``metric,filter``) of the metric that represents a cell in the table and the chart."""
    keys = {}
    for key, value in metrics.items():
        name = key.split(",")[0]
        if name not in _NOT_SCORES and not name.endswith("_stderr") and isinstance(value, (int, float)):
            keys.setdefault(name, key)
    for name in HEADLINE:
        if name in keys:
            return keys[name]
    return keys[min(keys)] if keys else None


def headline(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The metric that represents a cell in the table and the chart: its name and value."""
    key = headline_key(metrics)
    return None if key is None else (key.split(",")[0], float(metrics[key]))


def cell_score(cell: dict[str, Any], results: dict[str, Any] | None = None) -> Score:
    """A summary cell's headline metric for the chart; ``results`` (the cell's lm_eval results) fill in the
    stderr and the metric's direction where the summary has none."""
    if cell["status"] == "failed":
        return Score(status="failed")
    metrics = cell.get("metrics") or {}
    key = headline_key(metrics)
    if key is None:
        return Score(status="missing")
    name, _, filtered = key.partition(",")
    stderr_key = f"{name}_stderr" + (f",{filtered}" if filtered else "")
    task_results = ((results or {}).get("results") or {}).get(cell["task"]) or {}
    stderr = _number(metrics.get(stderr_key, task_results.get(stderr_key)))
    directions = cell.get("higher_is_better") or ((results or {}).get("higher_is_better") or {}).get(cell["task"]) or {}
    lower = directions[name] is False if name in directions else name in LOWER_IS_BETTER
    return Score(
        metric=name, value=float(metrics[key]), stderr=stderr, lower_is_better=lower,
        reference=_number((cell.get("reference") or {}).get(key)), delta=_number((cell.get("deltas") or {}).get(key)),
        status=cell["status"],
    )


def cell_results(output: Path) -> dict[str, dict[str, Any]]:
    """The lm_eval results of each cell under ``output/cells/``, by the cell's key (as in summary.json)."""
    found: dict[str, dict[str, Any]] = {}
    for record in sorted((output / "cells").glob(f"*/{CELL_RECORD}")):
        try:
            key = json.loads(record.read_text()).get("key")
            results = json.loads((record.parent / CELL_RESULTS).read_text())
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(key, str) and isinstance(results, dict):
            found[key] = results
    return found


def chart_scores(
    summary: dict[str, Any], output: Path | None = None,
) -> tuple[list[str], list[str], dict[tuple[str, str], Score]]:
    """The models, the tasks and each (model, task)'s :class:`Score`, as the chart takes them; with
    ``output``, the sweep's directory, what the summary lacks comes from the cells' results."""
    models, tasks, cells = _table(summary)
    results = cell_results(output) if output is not None else {}
    return models, tasks, {pair: cell_score(cell, results.get(cell.get("key") or "")) for pair, cell in cells.items()}


def _number(value: Any) -> float | None:
    """``value`` as a finite float; ``None`` for lm_eval's "N/A" and anything else that is no number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _table(summary: dict[str, Any]) -> tuple[list[str], list[str], dict[tuple[str, str], dict[str, Any]]]:
    models: list[str] = []
    tasks: list[str] = []
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for cell in summary["cells"]:
        if cell["model"] not in models:
            models.append(cell["model"])
        if cell["task"] not in tasks:
            tasks.append(cell["task"])
        cells[(cell["model"], cell["task"])] = cell
    return models, tasks, cells


def _text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    if cell["status"] == "failed":
        return "failed"
    shown = headline(cell.get("metrics") or {})
    return "-" if shown is None else f"{shown[0]} {shown[1]:.4g}"


def _delta_text(cell: dict[str, Any] | None) -> str:
    if cell is None or not cell.get("deltas"):
        return "-"
    shown = headline(cell.get("metrics") or {})
    if shown is None:
        return "-"
    delta = next((v for k, v in cell["deltas"].items() if k.split(",")[0] == shown[0]), None)
    return "-" if delta is None else f"{shown[0]} {delta:+.2e}"


def counts_line(summary: dict[str, Any]) -> str:
    """``12 cells: 10 scored, 2 reused, 0 failed; 1 bundle(s) compiled.``, the words of the progress line."""
    counts = summary.get("counts")
    if not isinstance(counts, dict):  # a summary written before it carried its counts
        statuses = [c["status"] for c in summary["cells"]]
        counts = {"scored": statuses.count("scored") + statuses.count("done"),
                  "reused": statuses.count("reused") + statuses.count("cached"), "failed": statuses.count("failed")}
    return (f"{len(summary['cells'])} cells: {counts.get('scored', 0)} scored, {counts.get('reused', 0)} reused, "
            f"{counts.get('failed', 0)} failed; {summary.get('compiled', 0)} bundle(s) compiled.")


def render_markdown(summary: dict[str, Any]) -> str:
    models, tasks, cells = _table(summary)
    lines = ["# Sweep", "", "| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for model in models:
        lines.append(f"| {model} | " + " | ".join(_text(cells.get((model, task))) for task in tasks) + " |")
    if any(c.get("deltas") for c in summary["cells"]):
        lines += ["", "Δ against the HF reference (ours − reference, same samples):", "",
                  "| model | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for model in models:
            lines.append(f"| {model} | " + " | ".join(_delta_text(cells.get((model, task))) for task in tasks) + " |")
    lines += ["", counts_line(summary), ""]
    for cell in (c for c in summary["cells"] if c["status"] == "failed"):
        lines.append(f"- {cell['model']} × {cell['task']}: {cell.get('error')}")
    return "\n".join(lines).rstrip() + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}th:first-child,td:first-child{text-align:left}
.failed{color:#b00}.note{color:#666;font-size:.9em}.chart svg{display:block;max-width:100%;height:auto}"""


def render_html(summary: dict[str, Any], output: Path | None = None) -> str:
    """The report page; with ``output``, the sweep's directory, the chart reads what the summary lacks from
    the cells' results."""
    models, tasks, cells = _table(summary)
    chart = build_chart(*chart_scores(summary, output))
    head = "".join(f"<th>{html.escape(task)}</th>" for task in tasks)
    rows = []
    for model in models:
        tds = []
        for task in tasks:
            cell = cells.get((model, task))
            css = ' class="failed"' if cell and cell["status"] == "failed" else ""
            title = html.escape(cell.get("error") or "") if cell else ""
            tds.append(f'<td{css} title="{title}">{html.escape(_text(cell))}</td>')
        rows.append(f"<tr><td>{html.escape(model)}</td>{''.join(tds)}</tr>")
    note = html.escape(counts_line(summary))
    data = json.dumps(summary, sort_keys=True).replace("</", "<\\/")  # raw JSON inside <script>
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>rbln-eval sweep</title>"
        f"<style>{_STYLE}</style></head><body><h1>rbln-eval sweep</h1>"
        f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"
        f"<h2>headline metric per task</h2><div class='chart'>{chart_svg(chart)}</div>"
        f"<p class='note'>{html.escape(chart.caption)}</p>"
        f"<p class='note'>{note}</p><script type='application/json' id='summary'>{data}</script></body></html>\n"
    )


def render_reports(output: Path, summary: dict[str, Any]) -> None:
    write_atomic(output / "summary.md", render_markdown(summary))
    write_atomic(output / "report.html", render_html(summary, output))


def rerender(output: str | Path) -> Path:
    """Render ``summary.md`` and ``report.html`` again from ``output/summary.json``."""
    output = Path(output)
    try:
        summary = json.loads((output / SUMMARY_NAME).read_text())
    except FileNotFoundError:
        raise RblnEvalError(f"{output} holds no {SUMMARY_NAME}", "point at the --output directory of a sweep") from None
    except (OSError, ValueError) as exc:
        raise RblnEvalError(f"{output / SUMMARY_NAME} cannot be read ({exc})") from None
    render_reports(output, summary)
    return output / "report.html"
