"""Bundle identity: what a compiled bundle is a function of, and its sha256 digest.

A :class:`BundleKey` holds every input that changes the compiler's output — the model source (Hub
commit or local content digest), the model class (a family's name), the normalized compile config, the
toolchain versions and the target NPU — and nothing else. Its digest is sha256 over canonical JSON, so the
same inputs give the same digest in any process, on any machine.

This package knows nothing about the store's files on disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from rbln_eval.errors import ConfigError
from rbln_eval.identity.config import TP_KEY, normalize_compile_config
from rbln_eval.identity.source import ModelSource
from rbln_eval.identity.toolchain import toolchain_versions
from rbln_eval.util.hashing import sha256_json

SCHEMA_VERSION = 1
KEY_FIELDS = ("schema", "source", "model_class", "compile", "toolchain", "target")


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
        if not isinstance(self.model_class, str) or not self.model_class:
            raise ConfigError(f"model class must be a family's name, got {self.model_class!r}")
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
                if a.get(sub, ABSENT) != b.get(sub, ABSENT):
                    diffs.append(FieldDiff(f"{name}.{sub}", a.get(sub, ABSENT), b.get(sub, ABSENT)))
        else:
            diffs.append(FieldDiff(name, a, b))
    return diffs


class Absent:
    """The value of a setting one of two keys does not have (shown as ``<absent>``)."""

    def __repr__(self) -> str:
        return "<absent>"

    def __str__(self) -> str:
        return "<absent>"


#: What :func:`diff_keys` reports for a setting one side lacks.
ABSENT = Absent()
