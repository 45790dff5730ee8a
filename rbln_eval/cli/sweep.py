"""Sweep commands: sweep (models × configs × tasks, locally or on a Ray cluster) and report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from rbln_eval.cli.options import RemoteOpt, StoreOpt, err, open_store, out


def sweep_command(
    plan: Path = typer.Argument(..., help="The plan: a YAML file of models and tasks."),
    output: Path = typer.Option(..., "--output", "-o", help="Directory of the cells' results, summary and report."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Run on a Ray cluster: its address, 'auto' (this machine's cluster) or 'local' (a new one here)."),
    store: StoreOpt = None,
    remote: RemoteOpt = None,
    force: bool = typer.Option(False, "--force", help="Score cells again even when their results exist."),
    node_store: Optional[Path] = typer.Option(
        None, "--node-store",
        help="With --ray: the store on each NPU node (default: --store, on a filesystem every node mounts); "
        "bundles missing there are pulled from --remote, verified.",
    ),
) -> None:
    """Compile every model of a plan once per key and score every (model, task) cell; resumable.

    Example: rbln-eval sweep plan.yaml --output sweep/ --ray auto
    """
    from rbln_eval.sweep import load_plan, run_sweep

    loaded = load_plan(plan)  # a bad plan fails before anything is compiled
    st = open_store(store)
    state = {"compiles": "compiles -", "cells": "cells -", "replicas": ""}
    with err.status("sweep: planning…", spinner="dots") as status:

        def progress(stage: str, done: int, total: int) -> None:
            state[stage] = f" · replicas up {done}" if stage == "replicas" else f"{stage} {done}/{total}"
            status.update(f"sweep: {state['compiles']} · {state['cells']}{state['replicas']}")

        result = run_sweep(
            loaded, output, st, ray=ray, remote=remote, force=force, progress=progress, node_store=node_store,
        )
    err.print(f"{len(result.cells)} cells: {result.counts}; {result.compiled} bundle(s) compiled", markup=False)
    for cell in result.failed:
        err.print(f"failed: {cell.model} × {cell.task}: {cell.error}", markup=False)
    out.print((output / "summary.md").read_text(), markup=False, end="")
    err.print(f"report: {output / 'report.html'}", markup=False)
    if result.failed:
        raise typer.Exit(1)


def report_command(
    output: Path = typer.Argument(..., help="The --output directory of a sweep."),
) -> None:
    """Render a sweep's summary.md and report.html again from its summary.json.

    Example: rbln-eval report sweep/
    """
    from rbln_eval.sweep.report import rerender

    path = rerender(output)
    out.print((output / "summary.md").read_text(), markup=False, end="")
    err.print(f"report: {path}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep_command)
    app.command("report")(report_command)
