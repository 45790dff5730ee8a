"""The sweep report's chart: each task's headline metric per model, drawn by matplotlib as inline SVG.

Up to :data:`SMALL_MULTIPLES_MAX_TASKS` tasks, one small panel per task with its own value axis: a
horizontal bar per model with its stderr as an error bar, the value (± stderr, Δ against the reference) beside
it and the reference's value as a hollow diamond. Beyond that, a heat map of tasks × models coloured from
the worst to the best value within each task, the value written in each cell. Lower-is-better metrics are
marked ``↓`` in both.

The SVG is deterministic (fixed hash salt, no date) and keeps its text as text; every bar, marker and
heat-map cell carries an id (:func:`element_id`) and a tooltip.
"""

from __future__ import annotations

import html
import io
import math
import re
import textwrap
from dataclasses import dataclass, field
from typing import Any

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

#: Up to this many tasks the chart is one panel per task; beyond it, a heat map.
SMALL_MULTIPLES_MAX_TASKS = 12

#: matplotlib settings every chart is drawn with: text stays text, ids and output are reproducible.
STYLE: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "rbln-eval-report",
    "svg.id": "chart",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}

_SMALL_MULTIPLES_CAPTION = (
    "One panel per task, its own axis from 0: each model's headline metric, ± its stderr as an error bar; the "
    "best value of a task in bold. ↓ marks metrics that are better lower (shaded panels). Hover a bar for its exact value."
)
_HEAT_MAP_CAPTION = (
    "One row per task, one column per model: each model's headline metric, coloured from the worst to the best "
    "value of its task (↓ marks metrics that are better lower). Hover a cell for its exact value ± stderr."
)
_HEAT_MAP_COLORS = "viridis"
_FAILED_COLOR = "#b00020"
_REFERENCE_COLOR = "#222222"
_LOWER_TINT = "#fdf3e1"
_LOWER_INK = "#8a4b00"


@dataclass(frozen=True)
class Score:
    """One cell as the chart draws it: its headline metric, or why it has none (``status``)."""

    metric: str | None = None
    value: float | None = None
    stderr: float | None = None
    lower_is_better: bool = False
    reference: float | None = None  # the reference's value of the same metric (plan ``reference: hf``)
    delta: float | None = None  # ours minus the reference's
    status: str = "scored"  # scored | reused | failed | missing


@dataclass
class Chart:
    """A drawn chart: the figure and the tooltip of each element id in it."""

    figure: Figure
    kind: str  # "small-multiples" | "heat-map" | "empty"
    caption: str = ""  # how to read it, for the page beside the chart
    tooltips: dict[str, str] = field(default_factory=dict)


def element_id(kind: str, task: str, model: str) -> str:
    """The SVG id of ``kind`` (``bar``, ``reference``, ``cell``) for one (task, model); unique per pair."""
    return f"{kind}/{_slug(task)}/{_slug(model)}"


def build_chart(models: list[str], tasks: list[str], scores: dict[tuple[str, str], Score]) -> Chart:
    """Small multiples for up to :data:`SMALL_MULTIPLES_MAX_TASKS` tasks, a heat map beyond."""
    with matplotlib.rc_context(STYLE):
        if not tasks or not models:
            figure = Figure(figsize=(4, 0.5))
            FigureCanvasAgg(figure)
            figure.text(0.01, 0.5, "no cells to chart", va="center")
            return Chart(figure, "empty")
        if len(tasks) <= SMALL_MULTIPLES_MAX_TASKS:
            return _small_multiples(models, tasks, scores)
        return _heat_map(models, tasks, scores)


def chart_svg(chart: Chart) -> str:
    """The figure as deterministic inline SVG, with a ``<title>`` tooltip on every element that has one."""
    buffer = io.StringIO()
    with matplotlib.rc_context(STYLE):
        chart.figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]  # no XML declaration or DOCTYPE inside HTML
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, count=1, flags=re.DOTALL)  # names matplotlib's web site
    svg = svg.replace(' xmlns:xlink="http://www.w3.org/1999/xlink"', "").replace("xlink:href=", "href=")  # SVG 2

    def titled(group: re.Match[str]) -> str:
        tip = chart.tooltips.get(html.unescape(group[1]))
        return group[0] if tip is None else f"{group[0]}<title>{html.escape(tip, quote=False)}</title>"

    return re.sub(r'<g id="([^"]*)">', titled, svg)


def value_text(score: Score, digits: int = 4) -> str:
    """``0.7234 ±0.012 Δ+0.0012``: the value, its stderr and its delta against the reference where known."""
    if score.value is None:
        return "failed" if score.status == "failed" else "–"
    text = f"{score.value:.{digits}g}"
    if score.stderr:
        text += f" ±{score.stderr:.2g}"
    if score.delta is not None:
        text += f" Δ{score.delta:+.2g}" if score.delta else " Δ0"
    return text


def direction(lower_is_better: bool) -> str:
    """How to read a metric's axis."""
    return "↓ lower is better" if lower_is_better else "↑ higher is better"


# --------------------------------------------------------------------------------------------------
# Small multiples
# --------------------------------------------------------------------------------------------------


def _small_multiples(models: list[str], tasks: list[str], scores: dict[tuple[str, str], Score]) -> Chart:
    columns = _columns(len(tasks))
    rows = math.ceil(len(tasks) / columns) or 1
    labels = [_wrap(m, 26) for m in models]
    line_height = 0.19 * max((label.count("\n") + 1 for label in labels), default=1)
    panel_height = len(models) * max(line_height + 0.08, 0.27) + 1.15
    has_reference = any(s.reference is not None for s in scores.values())
    figure = Figure(figsize=(3.9 * columns + 2.2, rows * panel_height + (0.35 if has_reference else 0)),
                    layout="constrained")
    FigureCanvasAgg(figure)
    figure.get_layout_engine().set(w_pad=0.08, h_pad=0.1, wspace=0.06, hspace=0.08)
    axes = figure.subplots(rows, columns, squeeze=False, sharey=True)
    chart = Chart(figure, "small-multiples", _SMALL_MULTIPLES_CAPTION)
    colors = _model_colors(len(models))
    positions = list(range(len(models)))
    for index, ax in enumerate(axes.flat):
        if index >= len(tasks):
            ax.set_axis_off()
            continue
        task = tasks[index]
        _panel(ax, task, models, [scores.get((m, task), Score(status="missing")) for m in models], colors, chart)
        ax.set_yticks(positions, labels)
        ax.tick_params(axis="y", length=0, labelleft=index % columns == 0)
    axes[0][0].set_ylim(len(models) - 0.5, -0.5)  # first model on top; shared by every panel
    if has_reference:
        marker = Line2D([], [], marker="D", linestyle="none", markerfacecolor="none", color=_REFERENCE_COLOR)
        figure.legend([marker], ["reference (same samples); Δ = ours − reference"], loc="outside lower center",
                      frameon=False)
    return chart


def _panel(ax: Any, task: str, models: list[str], scores: list[Score], colors: list[str], chart: Chart) -> None:
    scored = [s for s in scores if s.value is not None]
    lower = any(s.lower_is_better for s in scored)
    metric = next((s.metric for s in scored), None)
    ax.set_title(_wrap(task, 30), loc="left", fontweight="bold")
    if lower:
        ax.set_title("↓ lower is better", loc="right", color=_LOWER_INK, fontsize=8.5)
    ax.set_xlabel(f"{metric}  ({direction(lower)})" if metric else "no score", color=_LOWER_INK if lower else "black")
    if lower:
        ax.set_facecolor(_LOWER_TINT)
    shown = {f"{s.value:.4g}" for s in scored}
    best = (min if lower else max)(s.value for s in scored) if len(shown) > 1 else None  # bold, unless all equal
    drawn = [(position, score) for position, score in enumerate(scores) if score.value is not None]
    if drawn:  # one call per panel: matplotlib's cost is per call, not per bar
        bars = ax.barh([p for p, _ in drawn], [s.value for _, s in drawn], height=0.68,
                       color=[colors[p] for p, _ in drawn], zorder=2)
        for (position, score), bar in zip(drawn, bars.patches):
            bar.set_gid(element_id("bar", task, models[position]))
            chart.tooltips[bar.get_gid()] = f"{models[position]} · {task}: {score.metric} {value_text(score, 6)}"
    spread = [(position, score) for position, score in drawn if score.stderr]
    if spread:
        ax.errorbar([s.value for _, s in spread], [p for p, _ in spread], xerr=[s.stderr for _, s in spread],
                    fmt="none", ecolor="#333333", elinewidth=0.9, capsize=2.5, zorder=3)
    for position, (model, score) in enumerate(zip(models, scores)):
        if score.reference is not None:
            (marker,) = ax.plot(score.reference, position, marker="D", markersize=5, markerfacecolor="none",
                                markeredgewidth=1.1, color=_REFERENCE_COLOR, linestyle="none", zorder=4)
            marker.set_gid(element_id("reference", task, model))
            chart.tooltips[marker.get_gid()] = f"{model} · {task}: reference {score.reference:.6g}"
        ax.text(1.03, position, value_text(score), transform=ax.get_yaxis_transform(), va="center", fontsize=8.5,
                color=_FAILED_COLOR if score.status == "failed" else "black",
                fontweight="bold" if best is not None and score.value is not None
                and f"{score.value:.4g}" == f"{best:.4g}" else "normal")
    ax.set_xlim(*_value_range(scored, lower))
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
    ax.grid(axis="x", color="#dddddd", linewidth=0.6, zorder=0)
    ax.spines["left"].set_visible(False)


def _value_range(scored: list[Score], lower: bool) -> tuple[float, float]:
    """From 0 (bars are proportional to the values) to the largest value, error bar or reference."""
    highs = [s.value + (s.stderr or 0.0) for s in scored if s.value is not None]
    highs += [s.reference for s in scored if s.reference is not None]
    lows = [s.value - (s.stderr or 0.0) for s in scored if s.value is not None]
    top = max(highs, default=1.0)
    bottom = min(0.0, min(lows, default=0.0))
    if not lower and 0.0 <= bottom and top <= 1.0:
        return 0.0, 1.0  # a fraction (accuracy, exact match): its whole range
    top = top * 1.04 if top > 0 else 1.0
    return (bottom * 1.04, top) if bottom < 0 else (0.0, top)


# --------------------------------------------------------------------------------------------------
# Heat map
# --------------------------------------------------------------------------------------------------


def _heat_map(models: list[str], tasks: list[str], scores: dict[tuple[str, str], Score]) -> Chart:
    with_delta = any(s.delta is not None for s in scores.values())
    cell_width = min(0.75, 9.0 / max(1, len(models)))
    cell_height = 0.42 if with_delta else 0.27
    longest = max((len(m) for m in models), default=1)
    figure = Figure(figsize=(len(models) * cell_width + 4.8, len(tasks) * cell_height + 0.09 * min(longest, 40) + 1.4),
                    layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    chart = Chart(figure, "heat-map", _HEAT_MAP_CAPTION)
    colormap = matplotlib.colormaps[_HEAT_MAP_COLORS]
    fontsize = 7 if cell_width >= 0.42 else 6
    metrics: list[str] = []
    for row, task in enumerate(tasks):
        row_scores = [scores.get((m, task), Score(status="missing")) for m in models]
        scored = [s.value for s in row_scores if s.value is not None]
        lower = any(s.lower_is_better for s in row_scores if s.value is not None)
        metric = next((s.metric for s in row_scores if s.value is not None), None)
        metrics.append(f"{metric} {'↓' if lower else '↑'}" if metric else "–")
        low, high = (min(scored), max(scored)) if scored else (0.0, 0.0)
        for column, (model, score) in enumerate(zip(models, row_scores)):
            if score.value is None:
                color, ink = ("#eeeeee", _FAILED_COLOR) if score.status == "failed" else ("white", "#888888")
            else:
                rank = 1.0 if high == low else (score.value - low) / (high - low)
                color = colormap(1.0 - rank if lower else rank)
                ink = "white" if _luminance(color) < 0.5 else "black"
            cell = Rectangle((column - 0.5, row - 0.5), 1, 1, facecolor=color, edgecolor="white", linewidth=0.8,
                             gid=element_id("cell", task, model), in_layout=False)
            ax.add_artist(cell)  # the limits are set once below
            chart.tooltips[element_id("cell", task, model)] = f"{model} · {task}: {score.metric or ''} {value_text(score, 6)}".strip()
            text = _short(score.value) if score.value is not None else ("failed" if score.status == "failed" else "–")
            if score.delta is not None:
                text += f"\nΔ{score.delta:+.1g}" if score.delta else "\nΔ0"
            ax.text(column, row, text, ha="center", va="center", fontsize=fontsize if score.value is not None else 6,
                    color=ink, linespacing=1.0, in_layout=False)  # inside the axes: no say in the layout
    ax.set_xlim(-0.5, len(models) - 0.5)
    ax.set_ylim(len(tasks) - 0.5, -0.5)
    ax.set_xticks(range(len(models)), [_shorten(m, 36) for m in models], rotation=45, ha="left", rotation_mode="anchor")
    ax.xaxis.tick_top()
    ax.set_yticks(range(len(tasks)), [_shorten(t, 48) for t in tasks])
    side = ax.secondary_yaxis("right")
    side.set_yticks(range(len(tasks)), metrics)
    side.tick_params(length=0, labelsize=7)
    side.spines["right"].set_visible(False)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    bar = figure.colorbar(ScalarMappable(Normalize(0, 1), colormap), ax=ax, location="bottom", shrink=0.45,
                          aspect=35, pad=0.01)
    bar.set_ticks([0, 1], labels=["worst", "best"])
    bar.set_label("value within its task")
    return chart


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _columns(tasks: int) -> int:
    """Panels per row: 1, 2, 3, 2×2 for four, then rows of three."""
    return {0: 1, 1: 1, 2: 2, 4: 2}.get(tasks, 3)


def _model_colors(count: int) -> list[str]:
    palette = matplotlib.colormaps["tab10" if count <= 10 else "tab20"]
    return [matplotlib.colors.to_hex(palette(i % palette.N)) for i in range(count)]


def _luminance(color: tuple[float, ...]) -> float:
    red, green, blue = color[:3]
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def _short(value: float) -> str:
    """At most five characters: 0.723, 12.4, 1.23k, 3.4M."""
    size = abs(value)
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if size >= limit:
            return f"{value / limit:.3g}{suffix}"
    if size and size < 0.001:
        return f"{value:.0e}"
    return f"{value:.3g}"


def _wrap(text: str, width: int) -> str:
    """``text`` on lines of at most ``width`` characters, broken after ``/``, ``-``, ``_`` where possible."""
    if len(text) <= width:
        return text
    pieces = re.findall(r"[^/_\-.\s]*[/_\-.\s]?", text)
    lines, line = [], ""
    for piece in pieces:
        if line and len(line) + len(piece) > width:
            lines.append(line)
            line = ""
        line += piece
    lines.append(line)
    return "\n".join(chunk for line in lines for chunk in textwrap.wrap(line, width) or [""])


def _shorten(text: str, width: int) -> str:
    """``text``, or its start and end around an ellipsis when longer than ``width`` characters."""
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return f"{text[:head]}…{text[len(text) - (width - 1 - head):]}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", lambda m: f":{ord(m.group()):x}:", name)


