"""The sweep report's chart, from hand-made summaries: bars proportional to the values, stderr and Δ shown,
lower-is-better metrics marked, and from 1 task × 1 model to 50 × 20 no label overlapping another."""

from __future__ import annotations

import itertools
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.text import Text

from rbln_eval.sweep.chart import (
    SMALL_MULTIPLES_MAX_TASKS,
    build_chart,
    chart_svg,
    element_id,
)
from rbln_eval.sweep.report import (
    cell_score,
    chart_scores,
    render_html,
    render_markdown,
    render_reports,
)

SVG = "{http://www.w3.org/2000/svg}"


def summary_cell(model: str, task: str, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": model, "task": task, "status": "scored", "metrics": metrics, "reference": {}, "deltas": {},
            "error": None, "seconds": 1.0, "devices": [0], "node": None, "replicas": [], "key": f"{model}|{task}"} | extra


def demo_summary(reference: bool = False) -> dict[str, Any]:
    """Two models × the four demo tasks, with stderrs as lm_eval reports them (``N/A`` for perplexities)."""
    values = {
        "base": {"demo_mc": 0.75, "demo_gen": 0.4, "demo_cloze": 0.6, "demo_ppl": 16.0},
        "last": {"demo_mc": 0.5, "demo_gen": 0.4, "demo_cloze": 0.3, "demo_ppl": 4.0},
    }
    metric = {"demo_mc": "acc,none", "demo_gen": "exact_match,strip", "demo_cloze": "acc,none", "demo_ppl": "word_perplexity,none"}
    cells = []
    for model, scores in values.items():
        for task, value in scores.items():
            name, _, filtered = metric[task].partition(",")
            metrics = {metric[task]: value, f"{name}_stderr,{filtered}": "N/A" if task == "demo_ppl" else 0.05,
                       "sample_len": 20}
            extra = {}
            if reference:
                extra = {"reference": {metric[task]: value - 0.25}, "deltas": {metric[task]: 0.25}}
            cells.append(summary_cell(model, task, metrics, **extra))
    return {"schema": 1, "lm_eval": "0.4.13", "compiled": 2, "cells": cells}


def grid_summary(tasks: int, models: int) -> dict[str, Any]:
    """``tasks`` × ``models`` cells with long names, a perplexity every seventh task and some failed cells."""
    cells = []
    for t in range(tasks):
        task = f"task_{t:02d}" + ("_mmlu_high_school_european_history" if t % 9 == 2 else "")
        for m in range(models):
            model = f"model-{m:02d}" + ("-meta-llama/Llama-3.1-8B-Instruct" if m % 5 == 1 else "")
            value = 0.05 + ((t * 31 + m * 17) % 90) / 100
            metrics = {"word_perplexity,none": 1000 * value} if t % 7 == 3 else {"acc,none": value, "acc_stderr,none": 0.02}
            if (t * models + m) % 37 == 5:
                cells.append(summary_cell(model, task, {}, status="failed", error="compile failed: boom"))
            else:
                cells.append(summary_cell(model, task, metrics))
    return {"schema": 1, "lm_eval": "0.4.13", "compiled": 1, "cells": cells}


def chart_of(summary: dict[str, Any]):
    return build_chart(*chart_scores(summary))


def svg_root(page: str) -> ET.Element:
    return ET.fromstring(page[page.index("<svg"):page.index("</svg>") + len("</svg>")])


def group(root: ET.Element, gid: str) -> ET.Element:
    found = root.find(f".//{SVG}g[@id='{gid}']")
    assert found is not None, gid
    return found


def bar_length(root: ET.Element, task: str, model: str) -> float:
    """A horizontal bar's length in the SVG: the x extent of its rectangle's path."""
    path = group(root, element_id("bar", task, model)).find(f"{SVG}path")
    xs = [float(x) for x, _ in re.findall(r"([-\d.]+) ([-\d.]+)", path.get("d"))]
    return max(xs) - min(xs)


def test_bar_lengths_are_proportional_to_the_values() -> None:
    root = svg_root(render_html(demo_summary()))
    length = {(t, m): bar_length(root, t, m) for t in ("demo_mc", "demo_gen", "demo_cloze", "demo_ppl") for m in ("base", "last")}
    assert length[("demo_mc", "last")] / length[("demo_mc", "base")] == pytest.approx(0.5 / 0.75, rel=1e-4)
    assert length[("demo_cloze", "last")] / length[("demo_cloze", "base")] == pytest.approx(0.3 / 0.6, rel=1e-4)
    assert length[("demo_ppl", "last")] / length[("demo_ppl", "base")] == pytest.approx(4.0 / 16.0, rel=1e-4)
    assert length[("demo_gen", "last")] == pytest.approx(length[("demo_gen", "base")], rel=1e-6)  # equal scores, equal bars
    # Fractions are drawn on 0..1 in panels of one size: the same value is the same length in every panel.
    assert length[("demo_mc", "last")] / 0.5 == pytest.approx(length[("demo_gen", "base")] / 0.4, rel=1e-4)


def test_stderr_reference_and_delta_are_drawn_and_the_best_is_bold() -> None:
    chart = chart_of(demo_summary(reference=True))
    assert chart.tooltips[element_id("bar", "demo_mc", "base")] == "base · demo_mc: acc 0.75 ±0.05 Δ+0.25"
    assert chart.tooltips[element_id("bar", "demo_ppl", "last")] == "last · demo_ppl: word_perplexity 4 Δ+0.25"  # N/A: no ±
    assert chart.tooltips[element_id("reference", "demo_ppl", "last")] == "last · demo_ppl: reference 3.75"
    mc = chart.figure.axes[0]
    (errorbars,) = [c for c in mc.containers if isinstance(c, ErrorbarContainer)]
    (segments,) = [lines.get_segments() for lines in errorbars.lines[2]]
    np.testing.assert_allclose(np.array(segments), [[[0.7, 0], [0.8, 0]], [[0.45, 1], [0.55, 1]]])  # value ± stderr
    values = {t.get_text(): t.get_fontweight() for t in mc.texts}
    assert values == {"0.75 ±0.05 Δ+0.25": "bold", "0.5 ±0.05 Δ+0.25": "normal"}
    ppl = chart.figure.axes[3]
    assert {t.get_text(): t.get_fontweight() for t in ppl.texts} == {"16 Δ+0.25": "normal", "4 Δ+0.25": "bold"}  # lower wins
    gen = chart.figure.axes[1]
    assert {t.get_fontweight() for t in gen.texts} == {"normal"}  # a tie has no winner
    page = chart_svg(chart)
    assert f'<g id="{element_id("reference", "demo_mc", "base")}"><title>' in page
    assert "Δ = ours − reference" in page


def test_lower_is_better_metrics_are_marked() -> None:
    chart = chart_of(demo_summary())
    labels = {ax.get_title(loc="left"): (ax.get_xlabel(), ax.get_title(loc="right")) for ax in chart.figure.axes}
    assert labels["demo_ppl"] == ("word_perplexity  (↓ lower is better)", "↓ lower is better")
    assert labels["demo_mc"] == ("acc  (↑ higher is better)", "")
    assert labels["demo_gen"] == ("exact_match  (↑ higher is better)", "")
    # The direction lm_eval reports wins over the known list; a metric neither names is higher-is-better.
    cell = summary_cell("m", "t", {"my_error,none": 0.2})
    assert cell_score(cell).lower_is_better is False
    assert cell_score(cell, {"higher_is_better": {"t": {"my_error": False}}}).lower_is_better is True
    assert cell_score(cell | {"higher_is_better": {"my_error": False}}).lower_is_better is True
    assert cell_score(summary_cell("m", "t", {"bits_per_byte,none": 0.7})).lower_is_better is True
    heat = chart_of(grid_summary(SMALL_MULTIPLES_MAX_TASKS + 1, 3))
    (side,) = heat.figure.axes[0].child_axes  # the metric of each row, on the right
    assert [t.get_text() for t in side.get_yticklabels()][:4] == ["acc ↑", "acc ↑", "acc ↑", "word_perplexity ↓"]


def test_stderr_and_direction_come_from_the_cells_results_when_the_summary_lacks_them(tmp_path: Path) -> None:
    summary = {"schema": 1, "compiled": 1, "cells": [summary_cell("m", "t", {"loss,none": 2.5, "sample_len": 9}, key="k1")]}
    cell_dir = tmp_path / "cells" / "m__t"
    cell_dir.mkdir(parents=True)
    (cell_dir / "cell.json").write_text(json.dumps({"key": "k1"}))
    (cell_dir / "results.json").write_text(json.dumps({
        "results": {"t": {"loss,none": 2.5, "loss_stderr,none": 0.125, "sample_len": 9}},
        "higher_is_better": {"t": {"loss": False}},
    }))
    render_reports(tmp_path, summary)
    page = (tmp_path / "report.html").read_text()
    assert "<title>m · t: loss 2.5 ±0.12</title>" in page
    assert "loss  (↓ lower is better)" in page
    assert "| m | loss 2.5 |" in (tmp_path / "summary.md").read_text()


def test_the_svg_is_deterministic_offline_and_undated() -> None:
    first, second = render_html(demo_summary(reference=True)), render_html(demo_summary(reference=True))
    assert first == second
    assert re.findall(r"https?://[^\"'\s<]*", first) == ["http://www.w3.org/2000/svg"]
    assert "<dc:date>" not in first and "<metadata>" not in first
    assert "<text" in first  # text stays text (svg.fonttype none)


def test_a_failed_cell_has_no_bar_and_says_failed() -> None:
    summary = demo_summary()
    summary["cells"][0] = summary_cell("base", "demo_mc", {}, status="failed", error="compile failed: boom")
    page = render_html(summary)
    assert f'id="{element_id("bar", "demo_mc", "base")}"' not in page
    assert f'id="{element_id("bar", "demo_mc", "last")}"' in page
    assert ">failed</text>" in page or "failed" in [t.get_text() for t in chart_of(summary).figure.axes[0].texts]


def test_the_counts_line_speaks_the_words_of_the_progress_line() -> None:
    summary = demo_summary()
    summary["cells"][0] = summary_cell("base", "demo_mc", {}, status="failed", error="compile failed: boom")
    summary["cells"][1]["status"] = "reused"
    summary["compiled"] = 1
    line = "8 cells: 6 scored, 1 reused, 1 failed; 1 bundle(s) compiled."
    markdown = render_markdown(summary)
    assert f"\n{line}\n\n- base × demo_mc: compile failed: boom\n" in markdown
    assert f"<p class='note'>{line}</p>" in render_html(summary)  # the counts, not the last failure
    summary["counts"] = {"scored": 5, "reused": 2, "failed": 1}  # as summary.json carries them
    assert "8 cells: 5 scored, 2 reused, 1 failed; 1 bundle(s) compiled." in render_markdown(summary)
    legacy = demo_summary()
    for cell in legacy["cells"]:
        cell["status"] = "done" if cell["model"] == "base" else "cached"
    assert "8 cells: 4 scored, 4 reused, 0 failed; 2 bundle(s) compiled." in render_markdown(legacy)


def drawn_texts(figure) -> list[Text]:
    """Every text the figure draws (tick labels outside the view are not drawn, so not listed)."""
    drawn: list[Text] = []
    original = Text.draw

    def recording(self: Text, renderer: Any) -> None:
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)

    Text.draw = recording  # type: ignore[method-assign]
    try:
        figure.canvas.draw()
    finally:
        Text.draw = original  # type: ignore[method-assign]
    return drawn


def assert_no_text_overlaps(figure) -> None:
    texts = drawn_texts(figure)
    renderer = figure.canvas.get_renderer()
    frame = figure.bbox
    for text in texts:  # nothing cut off at the figure's edges
        box, label = text.get_window_extent(renderer), text.get_text()
        assert box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1 and box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1, label
    flat = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_rotation() == 0]
    boxes = np.array([[box.x0, box.y0, box.x1, box.y1] for _, box in flat])
    for i, (label, _) in enumerate(flat[:-1]):
        rest = boxes[i + 1:]
        overlap_x = np.minimum(boxes[i, 2], rest[:, 2]) - np.maximum(boxes[i, 0], rest[:, 0])
        overlap_y = np.minimum(boxes[i, 3], rest[:, 3]) - np.maximum(boxes[i, 1], rest[:, 1])
        clash = np.flatnonzero((overlap_x > 0.5) & (overlap_y > 0.5))
        assert not clash.size, (label, [flat[i + 1 + j][0] for j in clash])
    # Rotated labels (parallel strips): clear of every flat text, neighbouring baselines at least a line apart.
    rotated = [t for t in texts if t.get_rotation() != 0]
    for text in rotated:
        box = text.get_window_extent(renderer)
        overlap_x = np.minimum(box.x1, boxes[:, 2]) - np.maximum(box.x0, boxes[:, 0])
        overlap_y = np.minimum(box.y1, boxes[:, 3]) - np.maximum(box.y0, boxes[:, 1])
        assert not np.any((overlap_x > 0.5) & (overlap_y > 0.5)), text.get_text()
    for first, second in itertools.pairwise(rotated):
        angle = math.radians(first.get_rotation())
        assert second.get_rotation() == first.get_rotation()
        (x0, y0), (x1, y1) = (t.get_transform().transform(t.get_unitless_position()) for t in (first, second))
        distance = abs(-(x1 - x0) * math.sin(angle) + (y1 - y0) * math.cos(angle))
        _, height, _ = renderer.get_text_width_height_descent("Mg", first.get_fontproperties(), ismath=False)
        assert distance >= height, (first.get_text(), second.get_text(), distance, height)


@pytest.mark.parametrize(("tasks", "models", "kind"), [
    (1, 1, "small-multiples"),
    (4, 2, "small-multiples"),
    (SMALL_MULTIPLES_MAX_TASKS, 20, "small-multiples"),
    (SMALL_MULTIPLES_MAX_TASKS + 1, 1, "heat-map"),
    (50, 20, "heat-map"),
])
def test_from_one_cell_to_fifty_tasks_by_twenty_models_no_label_overlaps(tasks: int, models: int, kind: str) -> None:
    summary = grid_summary(tasks, models)
    chart = chart_of(summary)
    assert chart.kind == kind
    assert_no_text_overlaps(chart.figure)
    root = svg_root(chart_svg(chart))
    drawn = "bar" if kind == "small-multiples" else "cell"
    scored = [c for c in summary["cells"] if c["status"] == "scored"]
    assert len(root.findall(f".//{SVG}g[@id]")) >= len(scored)
    for cell in scored[:: max(1, len(scored) // 25)]:
        group(root, element_id(drawn, cell["task"], cell["model"]))


def test_element_ids_are_unique_for_names_that_look_alike() -> None:
    ids = {element_id("bar", t, m) for t in ("a/b", "a_b", "a:b") for m in ("x/y", "x y", "x")}
    assert len(ids) == 9
    assert element_id("bar", "demo_mc", "meta-llama/Llama-3.2-1B") == "bar/demo_mc/meta-llama:2f:Llama-3.2-1B"
