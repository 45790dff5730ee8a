"""System commands: doctor, and prefetch (what an air-gapped machine needs, into the HF caches)."""

from __future__ import annotations

import json

import typer

from typing import Optional

from rbln_eval.errors import RblnEvalError
from rbln_eval.store import Store
from rbln_eval.util.units import human_size
from rbln_eval.cli.options import IncludePathOpt, StoreOpt, err, out, split_tasks


def doctor_command(
    store: StoreOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Check this machine: toolchain, NPUs (rebel, rbln-smi or rbln-stat), CUDA, the store, remotes, Hub token.

    Example: rbln-eval doctor
    """
    from rbln_eval.execution.doctor import collect, render

    data = collect(Store(store))
    if as_json:
        out.print_json(json.dumps(data))
    else:
        render(data, out)


def prefetch_command(
    tasks: Optional[str] = typer.Option(None, "--tasks", help="Comma-separated lm_eval tasks whose datasets to download."),
    include_path: IncludePathOpt = None,
    models: Optional[list[str]] = typer.Option(None, "--model", help="Hub model id to download (repeatable)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Revision of the models (default: main), pinned to its commit."),
) -> None:
    """Put what tasks and models need into the HF caches, for a machine without network access.

    Copy the HF cache (HF_HOME, default ~/.cache/huggingface) over and run there with
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1.

    Example: rbln-eval prefetch --tasks lambada_openai,hellaswag --model meta-llama/Llama-3.2-1B
    """
    from rbln_eval.evaluation.prefetch import cache_dirs, prefetch_model, prefetch_tasks

    task_list = split_tasks(tasks) if tasks else []
    if not task_list and not models:
        raise RblnEvalError("nothing to prefetch", "pass {tasks} T1,T2 and/or {model} MODEL")
    total = 0
    downloaded = bool(models)

    def shown(item) -> None:
        if item.local:
            out.print(f"task {item.name}: nothing to fetch ({item.detail})", markup=False)
        else:
            out.print(f"task {item.name}: {item.detail} ({human_size(item.size)})", markup=False)

    for item in prefetch_tasks(task_list, include_path, notify=shown) if task_list else []:
        total += item.size
        downloaded = downloaded or not item.local
    for name in models or []:
        item = prefetch_model(name, revision)
        total += item.size
        out.print(f"model {item.name} {item.detail}: {item.files} files ({human_size(item.size)})", markup=False)
    if not downloaded:
        err.print("nothing to fetch: these tasks read local files, offline too", markup=False)
        return
    places = ", ".join(str(path) for path in cache_dirs())
    err.print(
        f"{human_size(total)} in the HF caches ({places}); copy them to the offline machine and run there with "
        "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_command)
    app.command("prefetch")(prefetch_command)
