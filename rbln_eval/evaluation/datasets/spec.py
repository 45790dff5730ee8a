"""Dataset task files: a small YAML per task, found among the built-in tasks and ``--include_path``.

```yaml
dataset_task: cls_cifar10          # the name (not lm_eval's ``task`` key: lm_eval's task index skips these files)
kind: image-classification         # the family task_kind it scores
dataset_path: uoft-cs/cifar10      # as datasets.load_dataset takes it; a local builder (json, csv) with data_files
dataset_name: null
split: test
columns: {image: img}              # the model's inputs: image / audio / text, text_pair / question, context
label: label                       # the label column: ClassLabel ints, or label names (QA: SQuAD's answers)
label_names: null                  # the names of int labels that are not a ClassLabel
label_map: null                    # {dataset label name: model label name}, or "by_index"
metrics: [top1, top5]
# question-answering only: unanswerable: true (SQuAD v2: the empty answer may win), max_answer_length: 30
```
Relative ``data_files`` and file paths in the data are read from the YAML's folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from rbln_eval.errors import ConfigError

#: Where the built-in dataset tasks live.
BUILTIN_DIR = Path(__file__).resolve().parent / "builtin"
#: What each kind reads from a dataset, besides the label: the first column is required, the others optional.
KIND_COLUMNS = {
    "image-classification": ("image",),
    "audio-classification": ("audio",),
    "text-classification": ("text", "text_pair"),
    "question-answering": ("question", "context"),
}
#: How many of each kind's columns are required (the first ones); one unless said.
REQUIRED_COLUMNS = {"question-answering": 2}
TASK_KEY = "dataset_task"
#: The roles whose columns may name files (read from the task's folder when relative).
MEDIA_ROLES = ("image", "audio")


@dataclass(frozen=True)
class DatasetTask:
    """One dataset task, as its YAML file says it."""

    name: str
    kind: str
    dataset_path: str
    split: str
    columns: Mapping[str, str]
    label: str
    metrics: tuple[str, ...]
    dataset_name: str | None = None
    data_files: Any = None
    label_names: tuple[str, ...] | None = None
    label_map: Mapping[str, str] | str | None = None
    version: float = 1.0
    folder: Path | None = None  # the YAML's folder: relative data files and paths are read from it
    config: Mapping[str, Any] = field(default_factory=dict)  # the YAML as written (recorded in results)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], folder: Path | None) -> "DatasetTask":
        name = str(config.get(TASK_KEY) or "")
        missing = [key for key in ("kind", "dataset_path", "split", "label", "metrics") if not config.get(key)]
        if missing:
            raise ConfigError(f"dataset task {name or '?'} ({folder}) has no {', '.join(missing)}")
        kind = str(config["kind"])
        if kind not in KIND_COLUMNS:
            raise ConfigError(f"dataset task {name}: kind {kind!r} is not one of {', '.join(KIND_COLUMNS)}")
        columns = dict(config.get("columns") or {})
        absent = [role for role in KIND_COLUMNS[kind][: REQUIRED_COLUMNS.get(kind, 1)] if role not in columns]
        if absent:
            raise ConfigError(f"dataset task {name}: columns must name the {', '.join(absent)} column")
        unknown = [role for role in columns if role not in KIND_COLUMNS[kind]]
        if unknown:
            roles = ", ".join(KIND_COLUMNS[kind])
            raise ConfigError(f"dataset task {name}: columns has no role {', '.join(map(repr, unknown))} ({kind}: {roles})")
        label_map = config.get("label_map")
        if label_map is not None and label_map != "by_index" and not isinstance(label_map, dict):
            raise ConfigError(f"dataset task {name}: label_map must be a mapping of label names, or by_index")
        names = config.get("label_names")
        return cls(
            name=name, kind=kind, dataset_path=str(config["dataset_path"]), split=str(config["split"]), columns=columns,
            label=str(config["label"]), metrics=tuple(config["metrics"]), dataset_name=config.get("dataset_name"),
            data_files=config.get("data_files"), label_names=tuple(names) if names else None, label_map=label_map,
            version=float(config.get("version", 1.0)), folder=folder, config=dict(config),
        )

    @property
    def media_columns(self) -> set[str]:
        """The columns holding images or audio clips (which may name files)."""
        return {self.columns[role] for role in MEDIA_ROLES if role in self.columns}

    def example(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A dataset row with the relative file names of its media columns read from the YAML's folder."""
        media = self.media_columns
        return {name: self.resolve(value) if name in media and isinstance(value, str) else value for name, value in row.items()}

    def load_kwargs(self) -> dict[str, Any]:
        """``datasets.load_dataset`` arguments, local data files resolved from the YAML's folder."""
        kwargs: dict[str, Any] = {"path": self.dataset_path, "split": self.split}
        if self.dataset_name:
            kwargs["name"] = self.dataset_name
        if self.data_files is not None:
            kwargs["data_files"] = self.resolve(self.data_files)
        return kwargs

    def resolve(self, value: Any) -> Any:
        """Relative file names in ``value`` (a path, or a list / mapping of them) joined to the YAML's folder."""
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, str) and self.folder is not None and not Path(value).is_absolute():
            candidate = self.folder / value
            try:
                if candidate.is_file():
                    return str(candidate)
            except OSError:  # not a file name (a long sentence of a text column)
                return value
        return value


def read_task_file(path: Path) -> Mapping[str, Any] | None:
    """The YAML of ``path`` when it is a dataset task file, else None."""
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) and TASK_KEY in config else None


def dataset_tasks(include_path: str | None = None) -> dict[str, DatasetTask]:
    """Every dataset task: the built-in ones, then those under ``include_path`` (which may replace them)."""
    folders = [BUILTIN_DIR] + [Path(p).expanduser() for p in (include_path or "").split(",") if p]
    found: dict[str, DatasetTask] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            config = read_task_file(path)
            if config is not None:
                task = DatasetTask.from_config(config, path.parent)
                found[task.name] = task
    return found


def split_tasks(names: list[str], include_path: str | None) -> tuple[list[DatasetTask], list[str]]:
    """The dataset tasks among ``names`` and the other (lm_eval) names."""
    known = dataset_tasks(include_path)
    return [known[n] for n in names if n in known], [n for n in names if n not in known]
