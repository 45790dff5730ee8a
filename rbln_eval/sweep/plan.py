"""Sweep plans: a YAML file of models (with ``compile``'s options) and tasks (with how they are run)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rbln_eval.api import CompileOptions
from rbln_eval.errors import ConfigError, PlanError

#: A model entry's fields: compile's options by their CompileOptions names, ``rbln_config`` for the rest.
MODEL_FIELDS = {"model", "name", "revision", "npu", "rbln_config", "trust_remote_code", *CompileOptions.names()}
TASK_FIELDS = {"task", "num_fewshot", "limit", "include_path", "gen_kwargs", "log_samples"}
PLAN_FIELDS = {"models", "tasks", "reference"}


@dataclass(frozen=True)
class ModelEntry:
    """One model of a plan and its compile options."""

    model: str
    name: str
    revision: str | None = None
    npu: str | None = None
    trust_remote_code: bool = False
    compile: CompileOptions = CompileOptions()

    def options(self) -> CompileOptions:
        return self.compile


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
        """What the scores depend on (``log_samples`` only decides what is written)."""
        return {k: v for k, v in asdict(self).items() if k != "log_samples"}


@dataclass(frozen=True)
class Plan:
    models: list[ModelEntry]
    tasks: list[TaskEntry]
    base: Path  # relative paths in the plan are relative to its file
    reference: str | None = None  # "hf": score every cell with the model's HF reference too (as ``compare``)


def _fields(raw: Any, known: set[str], main: str, where: str) -> dict[str, Any]:
    """An entry's fields: a bare string is its ``main`` field; unknown fields are refused."""
    if isinstance(raw, str):
        raw = {main: raw}
    if not isinstance(raw, dict) or not isinstance(raw.get(main), str) or not raw[main].strip():
        raise PlanError(f"{where}: each entry needs a {main!r} (a string), got {raw!r}")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise PlanError(f"{where}: unknown field(s) {', '.join(unknown)}", f"known: {', '.join(sorted(known))}")
    return dict(raw)


def _model(raw: Any, base: Path, where: str) -> ModelEntry:
    entry = _fields(raw, MODEL_FIELDS, "model", where)
    model = entry.pop("model")
    local = (base / model) if not Path(model).is_absolute() else Path(model)
    if local.is_dir():
        model = str(local.resolve())
    name = str(entry.pop("name", None) or Path(model).name)
    compile_options = {option: entry.pop(option) for option in CompileOptions.names() if option in entry}
    extra = entry.pop("rbln_config", None) or {}
    if not isinstance(extra, dict):
        raise PlanError(f"{where}: rbln_config must be a mapping of optimum-rbln options, got {extra!r}")
    try:
        return ModelEntry(model=model, name=name, compile=CompileOptions(**compile_options, extra=extra), **entry)
    except TypeError as exc:
        raise PlanError(f"{where}: {exc}") from None
    except ConfigError as exc:  # a compile option's value
        raise PlanError(f"{where}: {exc}") from None


def _task(raw: Any, base: Path, where: str) -> TaskEntry:
    entry = _fields(raw, TASK_FIELDS, "task", where)
    if entry.get("include_path"):
        entry["include_path"] = str((base / entry["include_path"]).resolve())
    if isinstance(entry.get("gen_kwargs"), dict):
        entry["gen_kwargs"] = ",".join(f"{k}={v}" for k, v in entry["gen_kwargs"].items())
    for name in ("num_fewshot", "limit"):
        value = entry.get(name)
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise PlanError(f"{where}: {name} must be a non-negative number, got {value!r}")
    return TaskEntry(**entry)


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
    if set(data) - PLAN_FIELDS:
        raise PlanError(f"plan {path}: unknown top-level field(s) {', '.join(sorted(set(data) - PLAN_FIELDS))}")
    reference = data.get("reference")
    if reference not in (None, "hf"):
        raise PlanError(f"plan {path}: reference must be hf (or left out), got {reference!r}")
    base = path.parent
    models = [_model(raw, base, f"{path} models[{index}]") for index, raw in enumerate(data["models"])]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise PlanError(f"plan {path}: model names repeat ({', '.join(names)})", "give each entry a distinct name")
    tasks = [_task(raw, base, f"{path} tasks[{index}]") for index, raw in enumerate(data["tasks"])]
    return Plan(models, tasks, base, reference)
