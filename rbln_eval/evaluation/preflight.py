"""The cheap checks ``run`` and ``compare`` make before loading a bundle or compiling, in this order:
options, tasks, the tasks' datasets, devices; and, once the bundle is known, its chat template.

Each check raises a one-line :class:`~rbln_eval.errors.RblnEvalError`; none touches the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rbln_eval.errors import DevicePlacementError
from rbln_eval.execution.devices import DeviceReport, detect, format_devices, parse_device, plan_replicas
from rbln_eval.errors import ConfigError
from rbln_eval.util.netfaults import watch_datasets


def check_eval_options(num_fewshot: int | None, limit: float | None, gen_kwargs: str | dict[str, Any] | None) -> None:
    """Refuse lm_eval options that would otherwise turn into plausible-looking scores."""
    if num_fewshot is not None and num_fewshot < 0:
        raise ConfigError(f"must be 0 or more, got {num_fewshot}", option="num_fewshot")
    if limit is not None:
        if not limit > 0:
            raise ConfigError(f"must be positive (documents per task, or a fraction below 1), got {limit:g}", option="limit")
        if limit > 1 and not float(limit).is_integer():
            raise ConfigError(f"{limit:g}: give a whole number of documents, or a fraction below 1", option="limit")
    parse_gen_kwargs(gen_kwargs)


def parse_gen_kwargs(text: str | dict[str, Any] | None) -> dict[str, Any]:
    """``--gen_kwargs`` as lm_eval reads it (``key=value,…``), refusing parts it would silently misread."""
    if isinstance(text, dict):  # already read by lm_eval's parser
        return dict(text)
    if text is None or not text.strip():
        return {}
    from lm_eval.utils import handle_arg_string

    parsed: dict[str, Any] = {}
    for part in [p for p in text.split(",") if p.strip()]:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or not key or not key.isidentifier():
            raise ConfigError(
                f"{text!r}: {part.strip()!r} is not key=value; write e.g. {{gen_kwargs}} max_gen_toks=64,until=.",
                option="gen_kwargs",
            )
        parsed[key] = handle_arg_string(value)
    return parsed


class _Preloaded:
    """A TaskManager whose first ``load`` of the checked tasks returns the tasks already built."""

    def __init__(self, manager: Any, tasks: list[str], built: dict) -> None:
        self._manager = manager
        self._tasks = list(tasks)
        self._built: dict | None = built

    def load(self, task_list: Any) -> dict:
        if self._built is not None and list(task_list if isinstance(task_list, list) else [task_list]) == self._tasks:
            built, self._built = self._built, None
            return built
        return self._manager.load(task_list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)

    @property
    def output_types(self) -> dict[str, str]:
        """``{task: lm_eval output_type}`` of the checked tasks (empty once they are handed out)."""
        tasks = (self._built or {}).get("tasks", {})
        return {name: getattr(task, "OUTPUT_TYPE", None) or task.get_config("output_type") for name, task in tasks.items()}


def check_request_types(family: Any, manager: Any) -> None:
    """Refuse, before any device work, the checked tasks whose requests the bundle's family does not answer."""
    output_types = getattr(manager, "output_types", None) or {}
    refused = family.unscorable_tasks(output_types)
    if refused:
        kinds = sorted({output_types[task] for task in refused})
        raise ConfigError(
            f"task(s) {', '.join(refused)} ask for {', '.join(kinds)} requests, which {family.name} bundles do not answer"
        )


def load_tasks(
    tasks: list[str], include_path: str | None, loaded: list[str] | None = None, metadata: dict[str, Any] | None = None
) -> Any:
    """Check the task names, then build the tasks (which loads their datasets, from the HF cache when offline).

    ``metadata`` is lm_eval's task metadata (``--metadata``, merged with the model_args).
    Returns a task manager for ``simple_evaluate`` that hands out these tasks once, so they are not built twice.
    A dataset that cannot be loaded fails here, within seconds when the Hub cannot be reached.
    """
    from rbln_eval.evaluation.tasks import task_manager_for

    manager = task_manager_for(tasks, include_path, metadata)
    with watch_datasets(",".join(tasks), loaded):
        built = manager.load(list(tasks))
    return _Preloaded(manager, tasks, built)


def requested_tp(options: Any) -> int:
    """The tensor parallelism compile options ask for (``--tp``, or ``--rbln-config``'s spellings of it)."""
    from rbln_eval.identity import TP_KEY, normalize_compile_config

    return int(normalize_compile_config(options.shared_config()).get(TP_KEY) or 1)


@dataclass(frozen=True)
class Placement:
    """Where the replicas go: ``None`` (no NPU: the default placement) or one device group per replica."""

    groups: list[list[int]] | None

    @property
    def data_parallel(self) -> bool:
        return self.groups is not None and len(self.groups) > 1


def check_devices(
    tp: int,
    device: Any = None,
    devices: str | None = None,
    data_parallel: int | None = None,
    report: DeviceReport | None = None,
) -> Placement:
    """Place replicas of a bundle compiled for ``tp`` NPUs on this node, or refuse with one line.

    ``device`` (``npu:2``, ``0-3``) must name ``tp`` existing NPUs; ``devices``/``data_parallel`` are split
    into groups of ``tp`` that must exist; otherwise the first free NPUs are taken.
    """
    index = parse_device(device)
    report = report if report is not None else detect()
    count = len(report.npus)
    if index is not None and len(index) != tp and not devices and (data_parallel or 1) == 1:
        raise DevicePlacementError(
            f"{device} names {len(index)} NPU(s), the bundle is compiled for tp={tp}",
            f"name {tp} NPU(s), e.g. {{device}} {format_devices(list(range(tp)))}", option="device",
        )
    found = plan_replicas(tp, devices, data_parallel, report, device=device)
    if found is None:
        return Placement(None)
    groups = found
    wanted = sorted({d for group in groups for d in group})
    missing = [d for d in wanted if d >= count]
    if missing:
        option, value = ("device", device) if index is not None else ("devices", devices)
        have = f"npu:0-{count - 1}" if count > 1 else ("npu:0" if count else "none")
        raise DevicePlacementError(
            f"{value}: this node has {count} NPU(s) ({have}), there is no {format_devices(missing)}; "
            "see `rbln-eval doctor`", option=option,
        )
    unavailable = [d for d in wanted if not report.npus[d].available]
    if unavailable:
        raise DevicePlacementError(
            f"{format_devices(unavailable)} not available on this node; see `rbln-eval doctor`, or choose others"
        )
    return Placement(groups)


def check_chat_template(bundle: Any, chat_template: bool | str) -> None:
    """Refuse ``--apply_chat_template`` before the bundle is loaded when lm_eval would refuse it later:
    a template name the tokenizer (or processor) does not have, or no chat template at all (lm_eval's and
    transformers' own messages)."""
    if not chat_template:
        return
    from types import SimpleNamespace

    from lm_eval.api.model import TemplateLM

    holder = _template_holder(bundle)
    if holder is None:
        return  # the model itself says what it lacks when it is opened
    try:
        template = TemplateLM.chat_template(SimpleNamespace(tokenizer=holder), chat_template)
        if not template:
            holder.apply_chat_template([{"role": "user", "content": ""}], tokenize=False, add_generation_prompt=True)
    except ValueError as exc:
        raise ConfigError(" ".join(str(exc).split())) from None


def _template_holder(bundle: Any) -> Any:
    """What holds the bundle's chat templates: its processor (which is its tokenizer for text models)."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(str(bundle.path))
    except Exception:  # noqa: BLE001 - a processor this machine cannot build is the model's to report
        return None
