"""Sweep reports: the models × tasks table as Markdown, and a self-contained HTML page with a chart.

Both are rendered from ``summary.json`` alone, so ``rbln-eval report DIR`` can re-render them. The HTML
page needs no network access: its style and its bar chart (inline SVG) are in the file.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from rbln_eval.util.atomic import write_atomic
from rbln_eval.errors import RblnEvalError

#: Metrics shown first when a task reports several (the usual headline metric of each kind of task).
HEADLINE = ("acc", "exact_match", "word_perplexity", "perplexity", "acc_norm", "bits_per_byte")


def headline(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """The metric that represents a cell in the table and the chart."""
    plain = {k.split(",")[0]: v for k, v in metrics.items()}
    for name in HEADLINE:
        if name in plain:
            return name, float(plain[name])
    for name, value in sorted(plain.items()):
        return name, float(value)
    return None


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
    failed = [c for c in summary["cells"] if c["status"] == "failed"]
    done = sum(1 for c in summary["cells"] if c["status"] in ("done", "cached"))
    lines += ["", f"{done} of {len(summary['cells'])} cells scored, {len(failed)} failed; {summary['compiled']} bundle(s) compiled.", ""]
    for cell in failed:
        lines.append(f"- {cell['model']} × {cell['task']}: {cell.get('error')}")
    return "\n".join(lines).rstrip() + "\n"


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}th:first-child,td:first-child{text-align:left}
.failed{color:#b00}.note{color:#666;font-size:.9em}"""
_COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7")


def _chart(models: list[str], tasks: list[str], cells: dict[tuple[str, str], dict[str, Any]]) -> str:
    """Grouped bars: per task, each model's headline metric, scaled to the task's largest value."""
    bar, gap, height = 18, 24, 160
    width = max(1, len(tasks)) * (len(models) * bar + gap) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 60}" role="img">']
    for t, task in enumerate(tasks):
        values = [headline(cells[(m, task)].get("metrics") or {}) if (m, task) in cells else None for m in models]
        top = max((v[1] for v in values if v), default=0.0) or 1.0
        x0 = 20 + t * (len(models) * bar + gap)
        for m, value in enumerate(values):
            if not value:
                continue
            h = max(1.0, height * value[1] / top)
            x = x0 + m * bar
            parts.append(
                f'<rect x="{x}" y="{height - h + 10:.1f}" width="{bar - 2}" height="{h:.1f}" fill="{_COLORS[m % len(_COLORS)]}">'
                f"<title>{html.escape(models[m])} {html.escape(task)}: {value[0]} {value[1]:.4g}</title></rect>"
            )
        parts.append(f'<text x="{x0}" y="{height + 28}" font-size="11">{html.escape(task)}</text>')
    for m, model in enumerate(models):
        parts.append(
            f'<rect x="{20 + m * 120}" y="{height + 40}" width="10" height="10" fill="{_COLORS[m % len(_COLORS)]}"/>'
            f'<text x="{34 + m * 120}" y="{height + 49}" font-size="11">{html.escape(model)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(summary: dict[str, Any]) -> str:
    models, tasks, cells = _table(summary)
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
    note = html.escape(render_markdown(summary).splitlines()[-1] if summary["cells"] else "")
    data = json.dumps(summary, sort_keys=True).replace("</", "<\\/")  # raw JSON inside <script>
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>rbln-eval sweep</title>"
        f"<style>{_STYLE}</style></head><body><h1>rbln-eval sweep</h1>"
        f"<table><tr><th>model</th>{head}</tr>{''.join(rows)}</table>"
        f"<h2>headline metric per task</h2>{_chart(models, tasks, cells)}"
        f"<p class='note'>{note}</p><script type='application/json' id='summary'>{data}</script></body></html>\n"
    )


def render_reports(output: Path, summary: dict[str, Any]) -> None:
    write_atomic(output / "summary.md", render_markdown(summary))
    write_atomic(output / "report.html", render_html(summary))


def rerender(output: str | Path) -> Path:
    """Render ``summary.md`` and ``report.html`` again from ``output/summary.json``."""
    output = Path(output)
    try:
        summary = json.loads((output / "summary.json").read_text())
    except FileNotFoundError:
        raise RblnEvalError(f"{output} holds no summary.json", "point at the --output directory of a sweep") from None
    except (OSError, ValueError) as exc:
        raise RblnEvalError(f"{output / 'summary.json'} cannot be read ({exc})") from None
    render_reports(output, summary)
    return output / "report.html"
