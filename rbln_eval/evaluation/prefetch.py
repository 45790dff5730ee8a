"""Fill the HF caches on a connected machine with what tasks and models need, for a machine without network.

Tasks are built the way lm_eval builds them (so their datasets are downloaded and prepared exactly as the
task configs name them); models are downloaded at a revision pinned to its commit. Copy the HF cache
(``HF_HOME``, ``~/.cache/huggingface`` by default) to the other machine and run there with
``HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from rbln_eval.errors import ConfigError
from rbln_eval.util.netfaults import datasets_offline, hub_model_errors, hub_offline, require_hub

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


def prefetch_tasks(tasks: Sequence[str], include_path: str | None, notify: Callable[[Fetched], None] | None = None) -> list[Fetched]:
    """Build each task as lm_eval does, downloading and preparing its datasets in the HF caches."""
    from rbln_eval.evaluation.evaluate import task_manager_for
    from rbln_eval.util.netfaults import watch_datasets

    _check_online()
    manager = task_manager_for(list(tasks), include_path)  # unknown names fail before any download
    require_hub("prefetch the datasets of " + ",".join(tasks), datasets=True)
    fetched: list[Fetched] = []
    roots = cache_dirs()
    for task in tasks:
        before = tree_size(roots)
        loaded: list[str] = []
        with watch_datasets(task, loaded):
            manager.load([task])
        item = Fetched("task", task, ", ".join(dict.fromkeys(loaded)) or "no dataset", max(0, tree_size(roots) - before))
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
