"""The model a bundle is compiled from, pinned: a Hub repo at a commit sha, or a local directory by content digest."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rbln_eval.errors import ModelSourceError
from rbln_eval.util.constants import COMMIT_RE
from rbln_eval.util.hashing import HashCache, sha256_json

#: Files of a local model directory that define the model: weights, config, tokenizer, custom code.
MODEL_FILE_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken", ".py", ".gguf", ".jinja"}
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


@dataclass(frozen=True)
class ModelSource:
    """Where the weights come from, pinned to immutable content.

    ``kind`` is ``"hub"`` (``id`` is the repo id, ``revision`` the commit sha) or ``"local"`` (``digest``
    covers the weights, config and tokenizer files; ``id`` is the directory, kept for display only so that a
    copied or moved model keeps its key).
    """

    kind: str
    id: str
    revision: str | None = None
    digest: str | None = None

    def key_fields(self) -> dict[str, Any]:
        if self.kind == "hub":
            return {"kind": "hub", "id": self.id, "revision": self.revision}
        return {"kind": "local", "digest": self.digest}

    @property
    def display(self) -> str:
        """``id@revision`` (short sha) for humans."""
        if self.kind == "hub":
            return f"{self.id}@{(self.revision or '')[:12]}"
        return f"{Path(self.id).name}@{(self.digest or '')[:12]}"


def local_model_digest(directory: Path, cache: HashCache | None = None) -> str:
    """Content digest of a local model directory's defining files (relative path + sha256 each)."""
    cache = cache or HashCache()
    entries = []
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in MODEL_FILE_SUFFIXES:
            continue
        entries.append([rel.as_posix(), cache.sha256(path)])
    cache.flush()
    if not any(name.endswith("config.json") for name, _ in entries):
        raise ModelSourceError(f"{directory} has no config.json: pass a directory saved with save_pretrained")
    return sha256_json(entries)


def _hub_commit_from_cache(repo_id: str, revision: str) -> str | None:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = storage / "refs" / revision
    if ref.is_file():
        return ref.read_text().strip()
    if COMMIT_RE.match(revision) and (storage / "snapshots" / revision).is_dir():
        return revision
    return None


def _hub_commit_online(repo_id: str, revision: str, token: str | bool | None) -> str:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi().model_info(repo_id, revision=revision, token=token)
    except RevisionNotFoundError:
        raise ModelSourceError(f"revision {revision!r} not found in {repo_id}", "check {revision}") from None
    except RepositoryNotFoundError:
        raise ModelSourceError(
            f"model {repo_id!r} not found on the Hub (or it is private): check the id or set HF_TOKEN"
        ) from None
    if not info.sha:
        raise ModelSourceError(f"the Hub did not return a commit for {repo_id}@{revision}")
    return info.sha


def resolve_source(model: str, revision: str | None = None, token: str | bool | None = None) -> ModelSource:
    """Pin ``model`` (a local directory or a Hub id) to immutable content.

    Hub ids resolve to the revision's commit sha: online through the Hub API, offline
    (``HF_HUB_OFFLINE=1`` or no network) from the local HF cache.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        if revision:
            raise ModelSourceError(f"applies to Hub models, but {model} is a local directory", option="revision")
        return ModelSource(kind="local", id=str(path.resolve()), digest=local_model_digest(path))
    if path.exists() or model.startswith((".", "/", "~")) or not _HUB_ID.match(model):
        raise ModelSourceError(f"{model} is neither a model directory nor a Hub model id (org/name)")

    from huggingface_hub import constants

    rev = revision or "main"
    if COMMIT_RE.match(rev):
        return ModelSource(kind="hub", id=model, revision=rev)
    from rbln_eval.errors import HubUnreachableError
    from rbln_eval.util.netfaults import endpoint, network_reason, offline_hint

    unreachable: str | None = None
    if not constants.is_offline_mode():
        try:
            return ModelSource(kind="hub", id=model, revision=_hub_commit_online(model, rev, token))
        except ModelSourceError:
            raise
        except Exception as exc:
            unreachable = network_reason(exc)
            if unreachable is None:
                raise
            # no network: fall back to the cache below
    commit = _hub_commit_from_cache(model, rev)
    if commit is None:
        if unreachable is not None:
            raise HubUnreachableError(
                f"cannot reach the Hub at {endpoint()} ({unreachable}) to resolve {model}@{rev}, "
                f"and it is not in the HF cache: {offline_hint(False)}"
            )
        raise ModelSourceError(
            f"cannot resolve {model}@{rev} offline: it is not in the HF cache (HF_HUB_OFFLINE is set); "
            f"run `rbln-eval prefetch --model {model}` on a connected machine and copy the HF cache, or pass a commit sha"
        )
    return ModelSource(kind="hub", id=model, revision=commit)
