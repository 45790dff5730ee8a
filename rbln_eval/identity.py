"""Bundle identity: what a compiled bundle is a function of, and its sha256 digest.

A :class:`BundleKey` holds every input that changes the compiler's output — the model source (Hub
commit or local content digest), the model class, the normalized compile config, the toolchain versions
and the target NPU — and nothing else. Its digest is sha256 over canonical JSON, so the same inputs give
the same digest in any process, on any machine.

This module knows nothing about the store's files on disk.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .constants import COMMIT_RE
from .errors import ConfigError, ModelSourceError
from .hashing import HashCache
from .target import resolve_target, simulator_active  # noqa: F401 - part of the identity API

SCHEMA_VERSION = 1
KEY_FIELDS = ("schema", "source", "model_class", "compile", "toolchain", "target")
MODEL_CLASSES = ("causal", "seq2seq", "image-text-to-text")

#: optimum-rbln options that only affect how a compiled model is loaded, never what is compiled.
RUNTIME_ONLY_KEYS = frozenset({"create_runtimes", "device", "device_map", "activate_profiler", "timeout"})
#: Spellings of the tensor-parallel degree, folded into :data:`TP_KEY`.
TP_ALIASES = ("tp", "tensor_parallel_size", "num_devices")
TP_KEY = "num_devices"
#: Defaults made explicit so that leaving an option out and passing its default give one key.
COMPILE_DEFAULTS: Mapping[str, Any] = {"batch_size": 1, TP_KEY: 1}

TOOLCHAIN_PACKAGES = ("rebel-compiler", "optimum-rbln", "torch", "transformers")

#: Files of a local model directory that define the model: weights, config, tokenizer, custom code.
MODEL_FILE_SUFFIXES = frozenset(
    {".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken", ".py", ".gguf", ".jinja"}
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and fixed separators: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def sha256_json(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Model source
# --------------------------------------------------------------------------------------------------


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
    from .netfaults import HubUnreachableError, endpoint, network_reason, offline_hint

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


# --------------------------------------------------------------------------------------------------
# Compile config
# --------------------------------------------------------------------------------------------------


def _normalize_scalar(value: Any) -> Any:
    """Make string and numeric spellings of one value equal ("4" == 4, "true" == True)."""
    if isinstance(value, str):
        text = value.strip()
        low = text.lower()
        if low in ("true", "false"):
            return low == "true"
        if low in ("none", "null"):
            return None
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if re.fullmatch(r"[+-]?(\d+\.\d*|\.\d+|\d+\.?\d*[eE][+-]?\d+)", text):
            number = float(text)
            return int(number) if number.is_integer() else number
        return text
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if type(value).__module__ == "torch":  # torch.dtype
        return str(value).removeprefix("torch.")
    return value


def _normalize_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _normalize_mapping(value, top_level=False)
    if isinstance(value, (list, tuple)):
        return [_normalize_value(item) for item in value]
    return _normalize_scalar(value)


def _normalize_mapping(config: Mapping[str, Any], top_level: bool) -> dict[str, Any]:
    normalized: dict[str, Any] = {}
    for raw_key, value in config.items():
        if not isinstance(raw_key, str):
            raise ConfigError(f"compile option names must be strings, got {raw_key!r}")
        key = raw_key.removeprefix("rbln_")
        if key in RUNTIME_ONLY_KEYS:
            continue
        if key in TP_ALIASES:
            key = TP_KEY
        value = _normalize_value(value)
        if key in normalized and normalized[key] != value:
            raise ConfigError(f"compile option {key!r} given twice with different values ({normalized[key]!r}, {value!r})")
        normalized[key] = value
    if top_level:
        for key, default in COMPILE_DEFAULTS.items():
            normalized.setdefault(key, default)
    return dict(sorted(normalized.items()))


def normalize_compile_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Canonical form of an optimum-rbln compile config.

    ``rbln_`` prefixes are dropped, runtime-only keys removed, ``tp``/``tensor_parallel_size``/``num_devices``
    folded into ``num_devices``, string and numeric forms of one value made equal, defaults made explicit,
    keys sorted (recursively).
    """
    return _normalize_mapping(dict(config or {}), top_level=True)


# --------------------------------------------------------------------------------------------------
# Toolchain and target
# --------------------------------------------------------------------------------------------------


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def toolchain_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape a compiled bundle (``None`` when absent)."""
    return {name: package_version(name) for name in TOOLCHAIN_PACKAGES}


# --------------------------------------------------------------------------------------------------
# The key
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleKey:
    """Everything a compiled bundle depends on; :attr:`digest` names it in the store."""

    source: dict[str, Any]
    model_class: str
    compile: dict[str, Any]
    toolchain: dict[str, Any]
    target: str
    schema: int = SCHEMA_VERSION
    _digest: str = field(default="", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model_class not in MODEL_CLASSES:
            raise ConfigError(f"model class {self.model_class!r} is not one of {', '.join(MODEL_CLASSES)}")
        object.__setattr__(self, "_digest", sha256_json(self.fields()))

    @classmethod
    def build(
        cls,
        source: ModelSource,
        model_class: str,
        compile_config: Mapping[str, Any] | None,
        target: str,
        toolchain: Mapping[str, Any] | None = None,
    ) -> "BundleKey":
        return cls(
            source=source.key_fields(),
            model_class=model_class,
            compile=normalize_compile_config(compile_config),
            toolchain=dict(toolchain if toolchain is not None else toolchain_versions()),
            target=target,
        )

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> "BundleKey":
        missing = [name for name in KEY_FIELDS if name not in fields]
        if missing:
            raise ConfigError(f"key is missing field(s): {', '.join(missing)}")
        return cls(**{name: fields[name] for name in KEY_FIELDS})

    def fields(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in KEY_FIELDS}

    @property
    def tensor_parallel(self) -> int:
        """NPUs per replica (the folded ``tp`` / ``tensor_parallel_size`` / ``num_devices``)."""
        return int(self.compile.get(TP_KEY) or 1)

    @property
    def digest(self) -> str:
        return self._digest

    def field_digests(self) -> dict[str, str]:
        """sha256 of each field alone, to see which part of two keys differs."""
        return {name: sha256_json(value) for name, value in self.fields().items()}


@dataclass(frozen=True)
class FieldDiff:
    field: str
    left: Any
    right: Any


def diff_keys(left: BundleKey, right: BundleKey) -> list[FieldDiff]:
    """Differences between two keys, down to the sub-field (``compile.max_seq_len``, ``toolchain.torch``)."""
    diffs: list[FieldDiff] = []
    left_fields, right_fields = left.fields(), right.fields()
    for name in KEY_FIELDS:
        a, b = left_fields[name], right_fields[name]
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            for sub in sorted(set(a) | set(b)):
                if a.get(sub, _MISSING) != b.get(sub, _MISSING):
                    diffs.append(FieldDiff(f"{name}.{sub}", a.get(sub, _MISSING), b.get(sub, _MISSING)))
        else:
            diffs.append(FieldDiff(name, a, b))
    return diffs


class _Missing:
    def __repr__(self) -> str:
        return "<absent>"


_MISSING = _Missing()
