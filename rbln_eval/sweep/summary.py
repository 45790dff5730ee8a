"""What a sweep leaves: its cells counted in one vocabulary (scored, reused, failed), ``summary.json``
and the reports rendered from it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from rbln_eval.identity import package_version
from rbln_eval.sweep.cells import FAILED, REUSED, SCORED, Cell
from rbln_eval.util.atomic import write_atomic

SUMMARY_NAME = "summary.json"


@dataclass(frozen=True)
class CellCounts:
    """How many cells were scored by this run, reused from an earlier one, or failed."""

    scored: int
    reused: int
    failed: int

    @classmethod
    def of(cls, cells: Iterable[Cell]) -> "CellCounts":
        statuses = [cell.status for cell in cells]
        return cls(statuses.count(SCORED), statuses.count(REUSED), statuses.count(FAILED))

    @property
    def total(self) -> int:
        return self.scored + self.reused + self.failed

    def __str__(self) -> str:
        return f"{self.scored} scored, {self.reused} reused, {self.failed} failed"


@dataclass
class SweepResult:
    cells: list[Cell]
    compiled: int
    compile_failures: dict[str, str]
    output: Path

    @property
    def failed(self) -> list[Cell]:
        return [c for c in self.cells if c.status == FAILED]

    @property
    def counts(self) -> CellCounts:
        return CellCounts.of(self.cells)


def write_summary(output: Path, cells: Iterable[Cell], compiled: int) -> dict[str, Any]:
    """``summary.json`` (every cell, and the counts) and the reports rendered from it."""
    from rbln_eval.sweep.report import render_reports

    cells = list(cells)
    summary = {
        "schema": 1,
        "lm_eval": package_version("lm-eval"),
        "compiled": compiled,
        "counts": asdict(CellCounts.of(cells)),
        "cells": [
            {k: v for k, v in asdict(cell).items() if k not in ("settings", "log_samples")} | {"settings": cell.settings}
            for cell in cells
        ],
    }
    write_atomic(output / SUMMARY_NAME, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    render_reports(output, summary)
    return summary
