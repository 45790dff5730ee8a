"""Sweeps: models × compile configs × tasks, compiled once per key and evaluated cell by cell.

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

The compile stage keys every model and compiles each distinct key that neither the store nor the remotes
have, once (with Ray: as a task on any node with CPUs, into the shared store). The eval stage runs each
(bundle, task) cell — with Ray, longest first, as a task holding ``{"RBLN": tp}`` that Ray places on free
NPUs, taking more replicas while NPUs stay free (see :class:`~rbln_eval.execution.ray_transport.Growing`), run again
elsewhere if its node dies. A cell whose results exist for the same bundle, task settings and lm_eval
version is not run again (``force`` recomputes it). A failed compile fails its cells, with the reason;
the other cells go on. Output::

    DIR/cells/<cell>/results.json   lm_eval's results of one cell (and samples_<task>.jsonl when asked)
    DIR/summary.json                every cell: model, digest, task, metrics, status, seconds, node, devices
    DIR/summary.md, DIR/report.html the models × tasks table (the HTML with a chart, viewable offline)
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from rbln_eval.util.atomic import write_atomic
from rbln_eval.errors import ConfigError, RblnEvalError
from rbln_eval.identity import package_version
from rbln_eval.util.hashing import sha256_json
from rbln_eval.store import Bundle, Store

SUMMARY_NAME = "summary.json"
#: How often the progress line hears how many replicas the running cells have, in seconds.
PROGRESS_EVERY = 1.0
CELL_RESULTS = "results.json"
_MODEL_KEYS = {"model", "name", "revision", "tp", "batch_size", "max_seq_len", "logits", "npu", "dtype", "rbln_config", "trust_remote_code"}
_TASK_KEYS = {"task", "num_fewshot", "limit", "include_path", "gen_kwargs", "log_samples"}


class PlanError(ConfigError):
    """A sweep plan is malformed."""


@dataclass(frozen=True)
class ModelEntry:
    """One model of a plan and its compile options."""

    model: str
    name: str
    revision: str | None = None
    tp: int | None = None
    batch_size: int | None = None
    max_seq_len: int | None = None
    logits: str = "all"
    npu: str | None = None
    dtype: str | None = None
    rbln_config: dict[str, Any] = field(default_factory=dict)
    trust_remote_code: bool = False

    def options(self) -> Any:
        from rbln_eval.api import CompileOptions

        return CompileOptions(
            batch_size=self.batch_size, max_seq_len=self.max_seq_len, tp=self.tp, logits=self.logits,
            dtype=self.dtype, extra=self.rbln_config,
        )


@dataclass(frozen=True)
class TaskEntry:
    """One task of a plan and how it is run."""

    task: str
    num_fewshot: int | None = None
    limit: float | None = None
    include_path: str | None = None
    gen_kwargs: str | None = None
    log_samples: bool = False

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "log_samples"}


@dataclass(frozen=True)
class Plan:
    models: list[ModelEntry]
    tasks: list[TaskEntry]
    base: Path  # relative paths in the plan are relative to its file
    reference: str | None = None  # "hf": score every cell with the model's HF reference too (as ``compare``)


def _entry(raw: Any, keys: set[str], main: str, where: str) -> dict[str, Any]:
    if isinstance(raw, str):
        raw = {main: raw}
    if not isinstance(raw, dict) or not isinstance(raw.get(main), str) or not raw[main].strip():
        raise PlanError(f"{where}: each entry needs a {main!r} (a string), got {raw!r}")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise PlanError(f"{where}: unknown field(s) {', '.join(unknown)}", f"known: {', '.join(sorted(keys))}")
    return dict(raw)


def load_plan(path: str | Path) -> Plan:
    """Read and check a plan file; every problem is one :class:`PlanError` naming the entry."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PlanError(f"cannot read plan {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise PlanError(f"plan {path} is not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not data.get("models") or not data.get("tasks"):
        raise PlanError(f"plan {path} needs a list of models and a list of tasks")
    top = {"models", "tasks", "reference"}
    if set(data) - top:
        raise PlanError(f"plan {path}: unknown top-level field(s) {', '.join(sorted(set(data) - top))}")
    reference = data.get("reference")
    if reference not in (None, "hf"):
        raise PlanError(f"plan {path}: reference must be hf (or left out), got {reference!r}")
    base = path.parent
    models: list[ModelEntry] = []
    for index, raw in enumerate(data["models"]):
        entry = _entry(raw, _MODEL_KEYS, "model", f"{path} models[{index}]")
        model = entry.pop("model")
        local = (base / model) if not Path(model).is_absolute() else Path(model)
        if local.is_dir():
            model = str(local.resolve())
        name = str(entry.pop("name", None) or Path(model).name)
        try:
            models.append(ModelEntry(model=model, name=name, **entry))
        except TypeError as exc:
            raise PlanError(f"{path} models[{index}]: {exc}") from None
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise PlanError(f"plan {path}: model names repeat ({', '.join(names)})", "give each entry a distinct name")
    tasks: list[TaskEntry] = []
    for index, raw in enumerate(data["tasks"]):
        entry = _entry(raw, _TASK_KEYS, "task", f"{path} tasks[{index}]")
        if entry.get("include_path"):
            entry["include_path"] = str((base / entry["include_path"]).resolve())
        if isinstance(entry.get("gen_kwargs"), dict):
            entry["gen_kwargs"] = ",".join(f"{k}={v}" for k, v in entry["gen_kwargs"].items())
        for name in ("num_fewshot", "limit"):
            if entry.get(name) is not None and (not isinstance(entry[name], (int, float)) or entry[name] < 0):
                raise PlanError(f"{path} tasks[{index}]: {name} must be a non-negative number, got {entry[name]!r}")
        tasks.append(TaskEntry(**entry))
    return Plan(models, tasks, base, reference)


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One (model, task) of the sweep and what became of it."""

    model: str
    task: str
    settings: dict[str, Any]
    digest: str | None = None
    key: str | None = None  # identity of the cell's results: bundle, task settings, lm_eval version
    status: str = "pending"  # done | cached | failed
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    node: str | None = None
    devices: list[int] = field(default_factory=list)
    replicas: list[dict[str, Any]] = field(default_factory=list)  # on Ray: every replica that served the cell
    error: str | None = None
    reference: dict[str, Any] = field(default_factory=dict)  # the HF reference's metrics (plan ``reference: hf``)
    deltas: dict[str, Any] = field(default_factory=dict)  # ours minus the reference's, per metric

    @property
    def directory(self) -> str:
        return f"{self.model}__{self.task}".replace("/", "_")


def cell_key(digest: str, settings: dict[str, Any]) -> str:
    """What a cell's scores depend on besides the bundle: the task's settings and lm_eval's version."""
    return sha256_json({"bundle": digest, "task": settings, "lm_eval": package_version("lm-eval")})


def _metrics(results: dict[str, Any], task: str) -> dict[str, Any]:
    scores = results.get("results", {}).get(task, {})
    return {k: v for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and "_stderr" not in k}


def evaluate_cell(
    bundle_path: str, settings: dict[str, Any], output: str, log_samples: bool, replicas: Any = None,
    source: "BundleSource | None" = None,
) -> dict[str, Any]:
    """Score one cell and write its results.

    Here: on one replica in this process. As a Ray task holding ``{"RBLN": tp}``: on a replica in this
    process (on the task's ``RBLN_DEVICES``), joined by more replicas (Ray actors) while NPUs are free;
    ``replicas``, a :class:`ReplicaCount` actor, hears how many are up, and ``source`` says where the node
    of each replica gets the bundle (else it is read at ``bundle_path``).
    """
    from rbln_eval.api import open_lm
    from rbln_eval.execution.devices import visible_npus
    from rbln_eval.evaluation.evaluate import EvalOptions, evaluate, task_manager_for

    bundle = source.fetch() if source is not None else Bundle.open(Path(bundle_path))
    options = EvalOptions(
        tasks=[settings["task"]], num_fewshot=settings.get("num_fewshot"), limit=settings.get("limit"),
        include_path=settings.get("include_path"), gen_kwargs=settings.get("gen_kwargs"), log_samples=True,
    )
    started = time.monotonic()
    manager = task_manager_for(options.tasks, options.include_path)
    on_ray = _node() is not None
    if on_ray:
        from rbln_eval.execution.pool import PoolExecutor
        from rbln_eval.execution.ray_transport import Growing, RayTransport

        pool = PoolExecutor(bundle, [[]], RayTransport(None, bundle.key.tensor_parallel, here=True), source=source)
        report = (lambda count: replicas.set.remote(output, count)) if replicas is not None else None
        lm = open_lm(bundle, executor=pool)
        growing: Any = Growing(pool, on_change=report)
    else:
        devices = (visible_npus() or [])[: bundle.key.tensor_parallel] or None
        lm = open_lm(bundle, device=devices)
        growing = contextlib.nullcontext()
    with lm, growing:
        results = evaluate(lm, options, task_manager=manager)
        placed = list(lm.executor.groups[0]) if lm.executor.groups else list(range(bundle.key.tensor_parallel))
        served = lm.executor.describe().get("workers", []) if on_ray else []
        max_length = lm.max_length
    assert results is not None
    seconds = time.monotonic() - started
    reference: dict[str, Any] = {}
    deltas: dict[str, Any] = {}
    if settings.get("reference") == "hf":
        reference, deltas = _reference_scores(bundle, options, manager, results, max_length)
    samples = results.pop("samples", {})
    directory = Path(output)
    directory.mkdir(parents=True, exist_ok=True)
    from rbln_eval.evaluation.evaluate import summary_json

    if log_samples:
        for task, rows in samples.items():
            lines = "".join(json.dumps(row, default=str, ensure_ascii=False) + "\n" for row in rows)
            write_atomic(directory / f"samples_{task}.jsonl", lines)
    write_atomic(directory / CELL_RESULTS, summary_json(results))  # last: its presence means the cell is done
    return {
        "metrics": _metrics(results, settings["task"]), "seconds": seconds, "devices": placed, "node": _node(),
        "reference": reference, "deltas": deltas,
        "replicas": [{"node": w.get("node"), "devices": w["devices"], "requests": w["requests"]} for w in served],
    }


@dataclass(frozen=True)
class BundleSource:
    """Where an evaluating node gets a bundle: its own store, else the shared remote (verified on pull)."""

    digest: str
    store: str
    remote: Any = None  # a RemoteSpec

    def fetch(self) -> Bundle:
        store = Store(self.store)
        bundle = store.lookup(self.digest)
        if bundle is None and self.remote is not None:
            from rbln_eval.remotes import open_remote
            from rbln_eval.remotes.pull import pull_digest

            pulled = pull_digest(self.digest, store, [open_remote(self.remote)])
            bundle = pulled.bundle if pulled is not None else None
        if bundle is None:
            where = f" nor on remote {self.remote.name}" if self.remote is not None else ""
            raise RblnEvalError(
                f"bundle {self.digest[:12]} is neither in this node's store {store.root}{where}",
                "put the store on a filesystem every node mounts, or give the sweep a remote to share the bundles through",
            )
        return bundle


class ReplicaCount:
    """A Ray actor the cells tell how many replicas they run on; the sweep's progress line reads the total."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def set(self, cell: str, count: int) -> None:
        if count:
            self.counts[cell] = count
        else:
            self.counts.pop(cell, None)

    def total(self) -> int:
        return sum(self.counts.values())


def _reference_scores(bundle: Bundle, options: Any, manager: Any, ours: dict[str, Any], max_length: int) -> tuple[dict, dict]:
    """The HF reference's metrics on the same samples, and ours minus theirs (as ``rbln-eval compare``)."""
    from lm_eval import simple_evaluate

    from rbln_eval.evaluation.compare import compare_results, reference_lm
    from rbln_eval.evaluation.evaluate import sample_selection

    ref = simple_evaluate(model=reference_lm(bundle, max_length=max_length), **sample_selection(options, manager), log_samples=True)
    if ref is None:
        raise RblnEvalError("the reference evaluation returned no results")
    task = options.tasks[0]
    compared = next(c for c in compare_results(ours, ref, None) if c.task == task)
    return (
        {m.metric: m.reference for m in compared.metrics},
        {m.metric: m.delta for m in compared.metrics},
    )


def _node() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - not on Ray
        return None


# --------------------------------------------------------------------------------------------------
# Running a sweep
# --------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    cells: list[Cell]
    compiled: int
    compile_failures: dict[str, str]
    output: Path

    @property
    def failed(self) -> list[Cell]:
        return [c for c in self.cells if c.status == "failed"]


Progress = Callable[[str, int, int], None]


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
    """Compile what the plan needs (once per key), evaluate every cell, write the summary and the reports.

    On Ray, the cells find their bundles in ``node_store`` on their nodes (default: ``store``'s path, a
    filesystem every node mounts), else pull them, verified, from ``remote`` into it.
    """
    from rbln_eval.build.workflow import CompileRequest, plan_compile

    if node_store is not None and not ray:
        raise ConfigError("is where NPU nodes of a Ray cluster keep bundles", "pass {ray} too, or drop it", option="node_store")
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
    bundles, compiled = _compile_stage(requests, store, failures, ray=ray, remote=remote, report=report)
    extra = {"reference": plan.reference} if plan.reference else {}
    cells = [
        Cell(entry.name, task.task, {**task.settings(), **extra}, digest=bundles[entry.name].digest if entry.name in bundles else None)
        for entry in plan.models
        for task in plan.tasks
    ]
    log_samples = {task.task: task.log_samples for task in plan.tasks}
    for cell in cells:
        if cell.digest is None:
            cell.status, cell.error = "failed", f"compile failed: {failures.get(cell.model, 'unknown error')}"
        else:
            cell.key = cell_key(cell.digest, cell.settings)
            _reuse(cell, output, force)
    if ray:  # the longest cells first, so that the last ones to start are short (ties: plan order)
        costs = task_costs(plan.tasks)
        cells_to_run = sorted(cells, key=lambda c: -costs.get(_settings_id(c.settings), 0.0))
    else:
        cells_to_run = cells
    source = None
    if ray:
        from rbln_eval.remotes import get_spec

        source = (str(Path(node_store or store.root).resolve()), get_spec(store, remote) if remote else None)
    _eval_stage(cells_to_run, bundles, output, log_samples, ray=ray, report=report, source=source)
    write_summary(output, cells, compiled)
    return SweepResult(cells, compiled, failures, output)


#: Device calls per generation request, roughly (a prefill and some decode steps), against one per scored request.
GENERATION_WEIGHT = 4.0


def task_costs(tasks: Iterable[TaskEntry]) -> dict[str, float]:
    """A rough size of the cells of each task entry (by :func:`_settings_id`): documents × choices, or
    generations weighted by :data:`GENERATION_WEIGHT`.

    Only an order for scheduling, so only tasks of an ``include_path`` are looked at (lm_eval's index of its
    own tasks takes many seconds to build); any other task, or one that cannot be loaded here, counts 0.
    """
    from lm_eval.tasks import TaskManager

    managers: dict[str, Any] = {}
    costs: dict[str, float] = {}
    for entry in tasks:
        key = _settings_id(entry.settings())
        costs[key] = 0.0
        if not entry.include_path:
            continue
        try:
            if entry.include_path not in managers:
                managers[entry.include_path] = TaskManager(include_path=entry.include_path, include_defaults=False)
            built = managers[entry.include_path].load([entry.task])
            task = (built["tasks"] if "tasks" in built else built)[entry.task]
            docs = task.eval_docs
            count = len(docs)
            if entry.limit is not None:
                count = min(count, int(entry.limit) if entry.limit >= 1 else math.ceil(count * entry.limit))
            if task.OUTPUT_TYPE == "multiple_choice" and count:
                per = float(len(task.doc_to_choice(docs[0])))
            elif task.OUTPUT_TYPE == "generate_until":
                per = GENERATION_WEIGHT
            else:
                per = 1.0
            costs[key] = count * per
        except Exception:  # noqa: BLE001 - only the order of the cells depends on it
            pass
    return costs


def _settings_id(settings: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in settings.items() if k != "reference"}, sort_keys=True, default=str)


def _compile_stage(
    requests: dict[str, Any], store: Store, failures: dict[str, str], *, ray: str | None, remote: str | None,
    report: Progress,
) -> tuple[dict[str, Bundle], int]:
    """Each model's bundle: from the store or a remote, else compiled once per distinct key."""
    from rbln_eval.api import select_remotes
    from rbln_eval.build.workflow import find_or_pull

    remotes = select_remotes(store, remote or True)
    bundles: dict[str, Bundle] = {}
    missing: dict[str, Any] = {}  # digest -> request
    for name, request in requests.items():
        found = find_or_pull(request, store, remotes)
        if found is not None:
            bundles[name] = found[0]
        else:
            missing.setdefault(request.key.digest, request)
    total, done = len(missing), 0
    report("compiles", done, total)
    built: dict[str, Bundle | str] = {}
    if ray and missing:
        built = _compile_on_ray(missing, store, ray)
    for digest, request in missing.items():
        if digest not in built:
            try:
                from rbln_eval.build.workflow import compile_bundle

                built[digest] = compile_bundle(request, store).bundle
            except RblnEvalError as exc:
                built[digest] = str(exc)
            except Exception as exc:  # noqa: BLE001 - a compiler failure: recorded, the sweep goes on
                built[digest] = f"{type(exc).__name__}: {exc}"
        done += 1
        report("compiles", done, total)
    if remote:
        from rbln_eval.remotes import push_bundle, push_target

        target = push_target(store, remote=remote)
        for result in built.values():
            if isinstance(result, Bundle):
                push_bundle(store, result, target)
    for name, request in requests.items():
        if name in bundles:
            continue
        result = built[request.key.digest]
        if isinstance(result, Bundle):
            bundles[name] = result
        else:
            failures[name] = result
    return bundles, sum(1 for r in built.values() if isinstance(r, Bundle))


def _compile_on_ray(missing: dict[str, Any], store: Store, address: str) -> dict[str, Bundle | str]:
    """Compile each missing key as a Ray task on a node with CPUs, into the (shared) store."""
    from rbln_eval.execution.ray_transport import connect, forwarded_env

    connect(None if address == "local" else address)
    import ray

    @ray.remote(num_cpus=1, max_retries=1)
    def compile_task(request: Any, root: str) -> tuple[str | None, str | None]:
        from rbln_eval.build.workflow import compile_bundle

        try:
            return str(compile_bundle(request, Store(root)).bundle.path), None
        except Exception as exc:  # noqa: BLE001 - reported with the cell
            return None, str(exc) if isinstance(exc, RblnEvalError) else f"{type(exc).__name__}: {exc}"

    env = {"env_vars": forwarded_env()}
    refs = {digest: compile_task.options(runtime_env=env).remote(request, str(store.root.resolve())) for digest, request in missing.items()}
    built: dict[str, Bundle | str] = {}
    for digest, ref in refs.items():
        path, error = ray.get(ref)
        built[digest] = Bundle.open(Path(path)) if path else str(error)
    return built


def _reuse(cell: Cell, output: Path, force: bool) -> None:
    """Mark ``cell`` cached if its results exist for the same key."""
    path = output / "cells" / cell.directory / CELL_RESULTS
    record = output / "cells" / cell.directory / "cell.json"
    if force or not path.is_file() or not record.is_file():
        return
    try:
        saved = json.loads(record.read_text())
        results = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if saved.get("key") != cell.key:
        return
    cell.status = "cached"
    cell.metrics = _metrics(results, cell.task)
    cell.seconds = float(saved.get("seconds") or 0.0)
    cell.node, cell.devices = saved.get("node"), list(saved.get("devices") or [])
    cell.reference, cell.deltas = dict(saved.get("reference") or {}), dict(saved.get("deltas") or {})
    cell.replicas = list(saved.get("replicas") or [])


def _eval_stage(
    cells: list[Cell], bundles: dict[str, Bundle], output: Path, log_samples: dict[str, bool], *, ray: str | None,
    report: Progress, source: tuple[str, Any] | None = None,
) -> None:
    todo = [c for c in cells if c.status == "pending"]
    total, done = len(cells), len(cells) - len(todo)
    report("cells", done, total)

    def finish(cell: Cell, outcome: dict[str, Any] | None, error: str | None) -> None:
        nonlocal done
        if outcome is None:
            cell.status, cell.error = "failed", error
        else:
            cell.status, cell.metrics, cell.seconds = "done", outcome["metrics"], round(outcome["seconds"], 3)
            cell.node, cell.devices = outcome["node"], outcome["devices"]
            cell.reference, cell.deltas = outcome["reference"], outcome["deltas"]
            cell.replicas = outcome.get("replicas", [])
            record = {
                "key": cell.key, "seconds": cell.seconds, "node": cell.node, "devices": cell.devices,
                "replicas": cell.replicas, "reference": cell.reference, "deltas": cell.deltas,
            }
            write_atomic(output / "cells" / cell.directory / "cell.json", json.dumps(record))
        done += 1
        report("cells", done, total)

    if ray and todo:
        _eval_on_ray(todo, bundles, output, log_samples, ray, finish, report, source)
        return
    for cell in todo:
        bundle = next(b for b in bundles.values() if b.digest == cell.digest)
        try:
            outcome = evaluate_cell(str(bundle.path), cell.settings, str(output / "cells" / cell.directory), log_samples[cell.task])
        except RblnEvalError as exc:
            finish(cell, None, str(exc))
        else:
            finish(cell, outcome, None)


def _eval_on_ray(
    cells: list[Cell], bundles: dict[str, Bundle], output: Path, log_samples: dict[str, bool], address: str,
    finish: Callable[[Cell, dict[str, Any] | None, str | None], None], report: Progress,
    source: tuple[str, Any] | None,
) -> None:
    """Each cell as a Ray task of ``{"RBLN": tp}``: side by side on free NPUs, run again if its node dies."""
    from rbln_eval.execution.ray_transport import connect, forwarded_env

    connect(None if address == "local" else address)
    import ray

    task = ray.remote(max_retries=3, retry_exceptions=False)(evaluate_cell)
    env = {"env_vars": forwarded_env()}
    counter = ray.remote(ReplicaCount).options(num_cpus=0).remote()
    pending: dict[Any, Cell] = {}
    for cell in cells:
        bundle = next(b for b in bundles.values() if b.digest == cell.digest)
        ref = task.options(resources={"RBLN": bundle.key.tensor_parallel}, num_cpus=0, runtime_env=env).remote(
            str(bundle.path), cell.settings, str(output / "cells" / cell.directory), log_samples[cell.task], counter,
            BundleSource(bundle.digest, *source) if source else None,
        )
        pending[ref] = cell
    up = -1
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_EVERY)
        try:
            now = int(ray.get(counter.total.remote(), timeout=PROGRESS_EVERY))
        except ray.exceptions.RayError:
            now = up
        if now != up:
            up = now
            report("replicas", up, 0)
        if not ready:
            continue
        cell = pending.pop(ready[0])
        try:
            finish(cell, ray.get(ready[0]), None)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            finish(cell, None, str(cause).strip().splitlines()[-1])
        except ray.exceptions.RayError as exc:
            finish(cell, None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}")


# --------------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------------


def write_summary(output: Path, cells: Iterable[Cell], compiled: int) -> dict[str, Any]:
    """``summary.json`` and the reports rendered from it."""
    from rbln_eval.sweep.report import render_reports

    summary = {
        "schema": 1,
        "lm_eval": package_version("lm-eval"),
        "compiled": compiled,
        "cells": [
            {k: v for k, v in asdict(cell).items() if k != "settings"} | {"settings": cell.settings}
            for cell in cells
        ],
    }
    write_atomic(output / SUMMARY_NAME, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    render_reports(output, summary)
    return summary
