"""Running a sweep: key every model, get each key's bundle once, score the cells that have no results yet."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rbln_eval.api import select_remotes
from rbln_eval.errors import ConfigError, RblnEvalError
from rbln_eval.store import Bundle, Store
from rbln_eval.sweep.cells import PENDING, Cell, cell_key
from rbln_eval.sweep.plan import Plan
from rbln_eval.sweep.runners import LocalRunner, Progress, RayRunner, Runner
from rbln_eval.sweep.summary import SweepResult, write_summary

if TYPE_CHECKING:
    from rbln_eval.build.workflow import CompileRequest


def run_sweep(
    plan: Plan,
    output: str | Path,
    store: Store,
    *,
    ray: str | None = None,
    remote: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    node_store: str | Path | None = None,
) -> SweepResult:
    """Compile what the plan needs (once per key), score every cell, write the summary and the reports.

    Here, or with ``ray`` (an address, ``auto`` or ``local``) on a Ray cluster, where the cells find their
    bundles in ``node_store`` on their nodes (default: ``store``'s path, a filesystem every node mounts),
    else pull them, verified, from ``remote`` into it. A cell whose results exist for the same key is
    reused (``force`` scores it again).
    """
    from rbln_eval.build.workflow import plan_compile

    if node_store is not None and not ray:
        raise ConfigError("is where NPU nodes of a Ray cluster keep bundles", "pass {ray} too, or drop it", option="node_store")
    runner: Runner = LocalRunner()
    if ray:
        from rbln_eval.remotes import get_spec

        runner = RayRunner(ray, node_store or store.root, get_spec(store, remote) if remote else None)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    report = progress or (lambda stage, done, total: None)
    requests: dict[str, CompileRequest] = {}
    failures: dict[str, str] = {}
    for entry in plan.models:
        try:
            requests[entry.name] = plan_compile(
                entry.model, entry.options(), revision=entry.revision, npu=entry.npu,
                trust_remote_code=entry.trust_remote_code,
            )
        except RblnEvalError as exc:
            failures[entry.name] = str(exc)
    bundles, compiled = obtain_bundles(requests, store, failures, runner, remote, report)
    extra = {"reference": plan.reference} if plan.reference else {}
    cells = [
        Cell(entry.name, task.task, {**task.settings(), **extra}, log_samples=task.log_samples,
             digest=bundles[entry.name].digest if entry.name in bundles else None)
        for entry in plan.models
        for task in plan.tasks
        if entry.name not in requests or takes(requests[entry.name].model_class, task.task, task.include_path)
    ]
    for cell in cells:
        if cell.digest is None:
            cell.mark_failed(f"compile failed: {failures.get(cell.model, 'unknown error')}")
        else:
            cell.key = cell_key(cell.digest, cell.settings)
            if not force:
                cell.reuse(output)
    score_cells(cells, {b.digest: b for b in bundles.values()}, output, runner, report)
    write_summary(output, cells, compiled)
    return SweepResult(cells, compiled, failures, output)


def takes(model_class: str, task: str, include_path: str | None) -> bool:
    """Whether a model of ``model_class`` is scored on ``task``: dataset tasks for the families scored on them,
    lm_eval's tasks for the others (a plan crossing both kinds leaves the other pairs out)."""
    from rbln_eval.evaluation.datasets.spec import split_tasks
    from rbln_eval.families.registry import family_of

    dataset_tasks, _ = split_tasks([task], include_path)
    return bool(dataset_tasks) == (family_of(model_class).task_kind is not None)


def obtain_bundles(
    requests: dict[str, "CompileRequest"], store: Store, failures: dict[str, str], runner: Runner,
    remote: str | None, report: Progress,
) -> tuple[dict[str, Bundle], int]:
    """Each model's bundle (by entry name): from the store or a remote, else compiled once per distinct key;
    a compile's error goes into ``failures``. Also returns how many keys were compiled."""
    from rbln_eval.build.workflow import find_or_pull

    remotes = select_remotes(store, remote or True)
    bundles: dict[str, Bundle] = {}
    missing: dict[str, CompileRequest] = {}  # by digest
    for name, request in requests.items():
        found = find_or_pull(request, store, remotes)
        if found is not None:
            bundles[name] = found[0]
        else:
            missing.setdefault(request.key.digest, request)
    built: dict[str, Bundle | str] = {}
    report("compiles", 0, len(missing))

    def done(digest: str, result: Bundle | str) -> None:
        built[digest] = result
        report("compiles", len(built), len(missing))

    runner.compile(missing, store, done)
    if remote:
        from rbln_eval.remotes import push_bundle, push_target

        target = push_target(store, remote=remote)
        for result in built.values():
            if isinstance(result, Bundle):
                push_bundle(store, result, target)
    for name, request in requests.items():
        if name not in bundles:
            result = built[request.key.digest]
            if isinstance(result, Bundle):
                bundles[name] = result
            else:
                failures[name] = result
    return bundles, sum(1 for r in built.values() if isinstance(r, Bundle))


def score_cells(cells: list[Cell], bundles: dict[str, Bundle], output: Path, runner: Runner, report: Progress) -> None:
    """Score the pending cells (``bundles`` by digest), recording each as it ends."""
    todo = [c for c in cells if c.status == PENDING]
    done = len(cells) - len(todo)
    report("cells", done, len(cells))

    def finish(cell: Cell, outcome: dict | None, error: str | None) -> None:
        nonlocal done
        if outcome is None:
            cell.mark_failed(error or "unknown error")
        else:
            cell.mark_scored(outcome)
            cell.save(output)
        done += 1
        report("cells", done, len(cells))

    runner.evaluate(todo, bundles, output, finish, report)
