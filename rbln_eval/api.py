"""The library API: from a reference or a model to a bundle, and from a bundle to an lm_eval model.

``rbln-eval run``, ``RBLNLM(...)`` from Python and lm_eval's ``--model_args`` all go through these::

    from rbln_eval.api import CompileOptions, obtain_bundle, open_lm
    from rbln_eval.store import Store

    bundle = obtain_bundle(Store(), artifact="3f2a9c").bundle
    lm = open_lm(bundle, data_parallel=2)        # an lm_eval model: lm_eval.simple_evaluate(model=lm, ...)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Sequence

from rbln_eval.errors import ConfigError, RblnEvalError
from rbln_eval.families.base import CompileOptions
from rbln_eval.store import Bundle, Store

if TYPE_CHECKING:
    from rbln_eval.build.workflow import CompileRequest
    from rbln_eval.core.classifier import BundleClassifier
    from rbln_eval.core.lm import BundleLM
    from rbln_eval.core.work import Executor
    from rbln_eval.evaluation.evaluate import EvalOptions
    from rbln_eval.remotes import Remote

#: ``remotes=`` of :func:`obtain_bundle`: every configured remote (True), none (False), one by name,
#: or the remotes themselves.
RemoteChoice = bool | str | Sequence["Remote"]


@dataclass(frozen=True)
class Obtained:
    """The bundle to evaluate and where it came from."""

    bundle: Bundle
    origin: str  # "store" | "remote" | "compiled" | "raced" (another process compiled it meanwhile)
    remote: str | None = None  # the remote it was pulled from

    @property
    def compiled_now(self) -> bool:
        return self.origin == "compiled"


def select_remotes(store: Store, remotes: RemoteChoice) -> list["Remote"]:
    """The remotes a lookup asks: all configured ones, none, one configured remote by name, or those given."""
    if remotes is False:
        return []
    if remotes is True or isinstance(remotes, str):
        from rbln_eval.remotes import configured_remotes

        return configured_remotes(store, only=remotes if isinstance(remotes, str) else None)
    return list(remotes)


def obtain_bundle(
    store: Store,
    *,
    artifact: str | None = None,
    model: str | None = None,
    options: "CompileOptions | None" = None,
    revision: str | None = None,
    npu: str | None = None,
    remotes: RemoteChoice = True,
    export: bool = True,
    force: bool = False,
    trust_remote_code: bool = False,
    notify: Callable[[str], None] | None = None,
    compiling: Callable[["CompileRequest"], ContextManager[Any]] | None = None,
) -> Obtained:
    """The bundle of ``artifact`` (a stored reference), or of ``model`` with compile ``options``.

    A model is keyed first; its bundle comes from the store, else from the first remote that has the key
    (pulled and verified), else — with ``export`` — it is compiled through the store, never outside it.
    ``force`` compiles again. ``notify`` hears what happens; ``compiling(request)`` wraps the compile
    (a progress display).
    """
    if bool(artifact) == bool(model):
        raise ConfigError("pass exactly one of {artifact} REF or {model} MODEL")
    if artifact:
        return Obtained(store.resolve(artifact), "store")
    from rbln_eval.build.workflow import compile_bundle, find_or_pull, plan_compile

    request = plan_compile(model, options or CompileOptions(), revision=revision, npu=npu, trust_remote_code=trust_remote_code)  # type: ignore[arg-type]
    if not force:
        found = find_or_pull(request, store, select_remotes(store, remotes), notify=notify)
        if found is not None:
            bundle, served_by = found
            return Obtained(bundle, "store" if served_by is None else "remote", served_by)
    if not export:
        raise RblnEvalError(
            f"no bundle for {model} with this config (key {request.key.digest[:12]})",
            "compile it with `rbln-eval compile` or pass {export}=True",
        )
    with (compiling(request) if compiling is not None else contextlib.nullcontext()):
        result = compile_bundle(request, store, force=force, trust_remote_code=trust_remote_code, on_wait=notify)
    return Obtained(result.bundle, "compiled" if result.built else "raced")


@dataclass(frozen=True)
class GrowingPool:
    """Replicas for a Ray task that holds ``{"RBLN": tp}``: the first in this process, on the task's NPUs,
    more joining as Ray actors while NPUs are free (:class:`~rbln_eval.execution.pool.Growing`)."""

    source: Any = None  # ``fetch() -> Bundle`` on each replica's node, when the bundle may have to be pulled there
    on_change: Callable[[int], None] | None = None  # hears how many replicas are loaded (0 once closed)


def open_executor(
    bundle: Bundle,
    device: Any = None,
    devices: str | None = None,
    data_parallel: int | None = None,
    ray: str | None = None,
    groups: list[list[int]] | None = None,
    growing: GrowingPool | None = None,
) -> "Executor":
    """Replicas of ``bundle``: one in this process, or a worker per device group when there are several.

    ``device`` places one replica (``npu:2``, ``0-3``); ``devices`` (``0-7``) are split into replicas of
    the bundle's tensor parallelism; ``data_parallel`` K alone takes K groups of free NPUs. With ``ray``
    (a cluster address, or ``auto``) the K replicas are Ray actors of ``{"RBLN": tp}`` each, placed by Ray.
    ``groups`` is a placement already checked (:func:`rbln_eval.evaluation.preflight.check_devices`).
    ``growing`` (inside a Ray task holding NPUs) starts one replica here and adds more while NPUs are free.
    """
    from rbln_eval.execution.devices import plan_replicas

    if growing is not None:
        if device is not None or devices or data_parallel is not None or ray or groups is not None:
            raise ConfigError("a growing pool places its replicas itself: pass no placement with it")
        from rbln_eval.execution.pool.growing import open_growing_pool

        return open_growing_pool(bundle, growing.source, growing.on_change)  # type: ignore[return-value]
    if ray:
        if device is not None or devices:
            raise ConfigError("places replicas itself", "drop {device} and {devices}, or drop {ray}", option="ray")
        if data_parallel is not None and data_parallel < 1:
            raise ConfigError(f"must be a positive integer, got {data_parallel}", option="data_parallel")
        from rbln_eval.execution.pool import PoolExecutor, RayTransport

        transport = RayTransport(None if ray == "local" else ray, bundle.key.tensor_parallel)
        return PoolExecutor(bundle, [[] for _ in range(data_parallel or 1)], transport)

    if groups is None:
        groups = plan_replicas(bundle.key.tensor_parallel, devices, data_parallel, device=device)
    if groups is not None and len(groups) > 1:
        from rbln_eval.execution.pool import PoolExecutor

        return PoolExecutor(bundle, groups)
    from rbln_eval.execution.local import LocalExecutor
    from rbln_eval.execution.loader import load_bundle

    return LocalExecutor(load_bundle(bundle, device=None if groups is None else groups[0]), groups)


def open_lm(
    bundle: Bundle,
    device: Any = None,
    devices: str | None = None,
    data_parallel: int | None = None,
    ray: str | None = None,
    compiled_now: bool = False,
    groups: list[list[int]] | None = None,
    executor: "Executor | None" = None,
    **lm_args: Any,
) -> "BundleLM":
    """The lm_eval model of ``bundle``'s family (``rbln``, ``rbln-vlm``) over its replicas (see :func:`open_executor`).

    ``executor`` gives replicas already started (placement arguments are then not used).
    """
    from rbln_eval.families.registry import family_of

    lm_class = family_of(bundle.key.model_class).lm_class
    try:
        lm_class.check_args(lm_args)  # before any device is touched
    except BaseException:
        if executor is not None:
            executor.close()
        raise
    executor = executor or open_executor(bundle, device, devices, data_parallel, ray, groups)
    try:
        return lm_class(executor=executor, compiled_now=compiled_now, **lm_args)
    except BaseException:
        executor.close()
        raise


def evaluate_bundle(
    bundle: Bundle,
    options: "EvalOptions",
    task_manager: Any = None,
    *,
    executor: "Executor | None" = None,
    device: Any = None,
    devices: str | None = None,
    data_parallel: int | None = None,
    ray: str | None = None,
    groups: list[list[int]] | None = None,
    compiled_now: bool = False,
    lm_args: dict[str, Any] | None = None,
    **evaluate_args: Any,
) -> dict[str, Any] | None:
    """Score ``bundle`` with lm_eval: its lm over its replicas (:func:`open_lm`), evaluated, closed.

    ``executor`` gives replicas already started (they are closed at the end, as the lm's); else they are
    placed as :func:`open_executor` places them. ``evaluate_args`` go to
    :func:`rbln_eval.evaluation.evaluate.evaluate`. Returns its results (None when lm_eval returns none).
    """
    from rbln_eval.evaluation.evaluate import evaluate
    from rbln_eval.families.registry import family_of

    if family_of(bundle.key.model_class).task_kind is not None:
        classifier = open_classifier(
            bundle, device, devices, data_parallel, ray, compiled_now=compiled_now, groups=groups, executor=executor,
            **(lm_args or {}),
        )
        with classifier:
            return evaluate_dataset_bundle(classifier, options, **evaluate_args)
    lm = open_lm(
        bundle, device, devices, data_parallel, ray, compiled_now=compiled_now, groups=groups, executor=executor,
        **(lm_args or {}),
    )
    with lm:
        return evaluate(lm, options, task_manager=task_manager, **evaluate_args)


def open_classifier(
    bundle: Bundle,
    device: Any = None,
    devices: str | None = None,
    data_parallel: int | None = None,
    ray: str | None = None,
    compiled_now: bool = False,
    groups: list[list[int]] | None = None,
    executor: "Executor | None" = None,
    **model_args: Any,
) -> "BundleClassifier":
    """A bundle scored on dataset tasks (a classifier, an extractive QA model) over its replicas, as :func:`open_lm`."""
    from rbln_eval.core.classifier import BundleClassifier

    try:
        BundleClassifier.check_args(model_args)
    except BaseException:
        if executor is not None:
            executor.close()
        raise
    return BundleClassifier(executor or open_executor(bundle, device, devices, data_parallel, ray, groups), compiled_now)


def evaluate_dataset_bundle(
    classifier: "BundleClassifier", options: "EvalOptions", model_name: str | None = None, model_args: Any = None,
) -> dict[str, Any]:
    """Score ``classifier`` on the dataset tasks ``options`` names; results saved as lm_eval saves its own."""
    from rbln_eval.evaluation.datasets.run import evaluate_dataset_tasks, save_results
    from rbln_eval.evaluation.datasets.spec import split_tasks
    from rbln_eval.evaluation.evaluate import source_model_name

    tasks, others = split_tasks(options.tasks, options.include_path)
    if others:
        raise ConfigError(
            f"bundle {classifier.bundle.digest[:12]} ({classifier.family.name}) is scored on dataset tasks: "
            f"{', '.join(others)} {'is not one' if len(others) == 1 else 'are not'} (the built-in ones, or YAML files under --include_path)"
        )
    results = evaluate_dataset_tasks(classifier, tasks, options.limit, options.log_samples)
    save_results(results, options.output_path, model_name or source_model_name(classifier.bundle),
                 model_args if model_args is not None else f"artifact={classifier.bundle.digest}")
    return results
