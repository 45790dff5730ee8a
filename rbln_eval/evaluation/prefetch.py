"""Fill the HF caches on a connected machine with what tasks and models need, for a machine without network.

Tasks are built the way lm_eval builds them (so their datasets are downloaded and prepared exactly as the
task configs name them; a task whose data are local files needs nothing); models are downloaded at a
revision pinned to its commit. Copy the HF cache (``HF_HOME``, ``~/.cache/huggingface`` by default) to the
other machine and run there with ``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1``.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from rbln_eval.errors import ConfigError
from rbln_eval.util.netfaults import datasets_offline, hub_model_errors, hub_offline, needs_hub, watch_datasets

#: Files of a model repo that loading a model and its tokenizer reads (weights in safetensors when present).
MODEL_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py", "*.jinja", "*.tokenizer")
BIN_PATTERNS = ("*.bin",)


@dataclass(frozen=True)
class Fetched:
    """One thing put into the HF caches: ``kind`` is ``task`` or ``model``."""

    kind: str
    name: str
    detail: str  # the task's datasets, or the model's pinned commit
    size: int  # bytes the caches grew by (tasks) or the snapshot holds (models)
    files: int = 0
    local: bool = False  # a task whose data are local files: nothing was downloaded


def cache_dirs() -> list[Path]:
    """The HF hub cache and the datasets cache, as this process sees them."""
    from datasets import config as datasets_config
    from huggingface_hub import constants

    return [Path(constants.HF_HUB_CACHE), Path(datasets_config.HF_DATASETS_CACHE)]


def tree_size(roots: Sequence[Path]) -> int:
    """Bytes of the regular files under ``roots`` (symlinks not followed, so blobs count once)."""
    total = 0
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = Path(dirpath) / name
                if not path.is_symlink():
                    try:
                        total += path.stat().st_size
                    except OSError:
                        pass
    return total


def _check_online() -> None:
    if hub_offline() or datasets_offline():
        raise ConfigError(
            "prefetch downloads into the HF caches: unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE "
            "(run it on a machine that reaches the Hub)"
        )


def reads_network(path: str, data_files: Any = None) -> bool:
    """Whether ``datasets.load_dataset(path, data_files=...)`` downloads: a Hub dataset, or a packaged builder
    (``json``, ``csv``…) given URLs (``hf://``, ``https://``) rather than local files."""
    if needs_hub(path):
        return True
    pending, files = [data_files], []
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)
        elif item is not None:
            files.append(str(item))
    return any("://" in name for name in files)


@contextmanager
def network_loads(downloaded: list[str]) -> Iterator[None]:
    """While a task is built: append each dataset that is downloaded to ``downloaded``; offline, refuse
    to download (datasets read from local files load either way)."""
    import datasets

    inner = datasets.load_dataset

    def load_dataset(path: str, *args: Any, **kwargs: Any) -> Any:
        if reads_network(str(path), kwargs.get("data_files")):
            _check_online()
            name = kwargs.get("name") or (args[0] if args else None)
            downloaded.append(f"{path} ({name})" if name else str(path))
        return inner(path, *args, **kwargs)

    datasets.load_dataset = load_dataset
    try:
        yield
    finally:
        datasets.load_dataset = inner


def prefetch_tasks(tasks: Sequence[str], include_path: str | None, notify: Callable[[Fetched], None] | None = None) -> list[Fetched]:
    """Build each task as lm_eval does (a dataset task: load its dataset as ``run`` does), downloading and
    preparing its datasets in the HF caches.

    A task whose data are local files downloads nothing, and is built offline too.
    """
    from rbln_eval.evaluation.datasets.run import load_examples
    from rbln_eval.evaluation.datasets.spec import split_tasks
    from rbln_eval.evaluation.tasks import task_manager_for

    dataset_tasks, lm_eval_tasks = split_tasks(list(tasks), include_path)
    by_name = {task.name: task for task in dataset_tasks}
    manager = task_manager_for(lm_eval_tasks, include_path) if lm_eval_tasks else None  # unknown names fail first
    fetched: list[Fetched] = []
    roots = cache_dirs()
    for task in tasks:
        before = tree_size(roots)
        downloaded: list[str] = []
        with watch_datasets(task), network_loads(downloaded):
            if task in by_name:
                load_examples(by_name[task])  # a dataset task: its dataset, as `run` loads it
            else:
                assert manager is not None
                manager.load([task])
        if downloaded:
            item = Fetched("task", task, ", ".join(dict.fromkeys(downloaded)), max(0, tree_size(roots) - before))
        else:
            item = Fetched("task", task, "local files", 0, local=True)
        fetched.append(item)
        if notify is not None:
            notify(item)
    return fetched


def prefetch_model(model: str, revision: str | None = None, token: str | bool | None = None) -> Fetched:
    """Download what loading ``model`` reads, at ``revision`` (default ``main``) pinned to its commit.

    The branch or tag is recorded in the cache, so ``HF_HUB_OFFLINE=1 rbln-eval run --model MODEL`` resolves
    it to the same commit.
    """
    from huggingface_hub import HfApi, snapshot_download

    from rbln_eval.identity import resolve_source

    _check_online()
    if Path(model).expanduser().exists():
        raise ConfigError(f"{model} is a local path: prefetch takes Hub model ids (copy local models yourself)")
    source = resolve_source(model, revision, token=token)  # the commit sha; a missing repo fails here
    rev = revision or "main"
    with hub_model_errors(model):
        files = HfApi().list_repo_files(model, revision=source.revision, token=token)
        patterns = list(MODEL_PATTERNS)
        if not any(name.endswith(".safetensors") for name in files):
            patterns += BIN_PATTERNS
        snapshot = Path(snapshot_download(model, revision=rev, allow_patterns=patterns, token=token))
    commit = snapshot.name  # the snapshot's commit (the branch may have moved since it was resolved)
    entries = [p for p in snapshot.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in entries)
    return Fetched("model", model, f"{rev}@{commit}", size, len(entries))
