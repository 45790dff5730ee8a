"""A published bundle on disk: its manifest (the key, the sha256 and size of every file) and its check."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from rbln_eval.errors import CorruptBundleError, RblnEvalError
from rbln_eval.identity import BundleKey
from rbln_eval.util.atomic import write_atomic
from rbln_eval.util.constants import DIGEST_RE
from rbln_eval.util.hashing import sha256_file

MANIFEST_NAME = "rbln-eval-manifest.json"
BUILD_LOG_NAME = "rbln-eval-build.log"
MANIFEST_SCHEMA = 1


def is_safe_relpath(name: str) -> bool:
    """A manifest path that stays inside the bundle: relative, POSIX, no ``..``, no empty parts."""
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        return False
    parts = PurePosixPath(name).parts
    return all(part not in ("", ".", "..") for part in parts) and name != MANIFEST_NAME


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """What a bundle is (its key) and what it holds (every file's sha256 and size)."""

    digest: str
    key: BundleKey
    files: dict[str, FileEntry]
    created: str
    build_seconds: float
    info: dict[str, Any] = field(default_factory=dict)
    schema: int = MANIFEST_SCHEMA

    @property
    def total_size(self) -> int:
        return sum(entry.size for entry in self.files.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "digest": self.digest,
            "key": self.key.fields(),
            "files": {name: {"sha256": e.sha256, "size": e.size} for name, e in sorted(self.files.items())},
            "created": self.created,
            "build_seconds": round(self.build_seconds, 3),
            "build_log": BUILD_LOG_NAME if BUILD_LOG_NAME in self.files else None,
            "info": self.info,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> "Manifest":
        """Parse and validate; any inconsistency raises :class:`CorruptBundleError` naming ``where``."""

        def bad(reason: str) -> CorruptBundleError:
            return CorruptBundleError(
                f"malformed manifest in {where}: {reason}", "remove it with `rbln-eval rm` (or `rbln-eval gc`) and rebuild"
            )

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("schema") != MANIFEST_SCHEMA:
            raise bad(f"unsupported schema {data.get('schema')!r}")
        digest = data.get("digest")
        if not isinstance(digest, str) or not DIGEST_RE.match(digest):
            raise bad("missing or invalid digest")
        try:
            key = BundleKey.from_fields(data.get("key") or {})
        except (RblnEvalError, TypeError, ValueError) as exc:
            raise bad(f"invalid key ({exc})") from None
        if key.digest != digest:
            raise bad("the key does not hash to the recorded digest")
        files_raw = data.get("files")
        if not isinstance(files_raw, dict) or not files_raw:
            raise bad("no file list")
        files: dict[str, FileEntry] = {}
        for name, entry in files_raw.items():
            if not is_safe_relpath(name):
                raise bad(f"unsafe file path {name!r}")
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("sha256"), str)
                or not DIGEST_RE.match(entry["sha256"])
                or not isinstance(entry.get("size"), int)
                or entry["size"] < 0
            ):
                raise bad(f"invalid entry for {name!r}")
            files[name] = FileEntry(entry["sha256"], entry["size"])
        return cls(
            digest=digest,
            key=key,
            files=files,
            created=str(data.get("created", "")),
            build_seconds=float(data.get("build_seconds") or 0.0),
            info=dict(data.get("info") or {}),
        )

    @classmethod
    def read(cls, bundle_dir: Path) -> "Manifest":
        path = bundle_dir / MANIFEST_NAME
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise CorruptBundleError(
                f"{bundle_dir} has no {MANIFEST_NAME}; remove it with `rbln-eval gc` or rebuild"
            ) from None
        except (OSError, ValueError) as exc:
            raise CorruptBundleError(
                f"malformed manifest in {bundle_dir}: {exc}; remove it with `rbln-eval rm` and rebuild"
            ) from None
        return cls.from_json(data, str(bundle_dir))


@dataclass(frozen=True)
class Bundle:
    """A published bundle: a directory that optimum-rbln loads with ``from_pretrained(path, export=False)``."""

    path: Path
    manifest: Manifest

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def key(self) -> BundleKey:
        return self.manifest.key

    @classmethod
    def open(cls, path: Path, expected_digest: str | None = None) -> "Bundle":
        """Open a bundle directory and check it cheaply (manifest + file sizes)."""
        manifest = Manifest.read(path)
        if expected_digest is not None and manifest.digest != expected_digest:
            raise CorruptBundleError(
                f"{path} holds bundle {manifest.digest[:12]}, not {expected_digest[:12]}; remove it with `rbln-eval rm`"
            )
        for name, entry in manifest.files.items():
            try:
                size = (path / name).stat().st_size
            except FileNotFoundError:
                raise CorruptBundleError(
                    f"bundle {manifest.digest[:12]} is missing {name}; run `rbln-eval verify` and rebuild"
                ) from None
            if size != entry.size:
                raise CorruptBundleError(
                    f"bundle {manifest.digest[:12]}: {name} has {size} bytes, the manifest says {entry.size}; "
                    "run `rbln-eval verify` and rebuild"
                )
        return cls(path=path, manifest=manifest)


def scan_files(root: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file under ``root`` except the manifest."""
    entries: dict[str, FileEntry] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise RblnEvalError(f"bundle files must be regular files, {path} is a symlink")
        if not path.is_file():
            continue
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        entries[rel] = FileEntry(sha256_file(path), path.stat().st_size)
    return entries


def write_manifest(root: Path, manifest: Manifest) -> None:
    write_atomic(root / MANIFEST_NAME, json.dumps(manifest.to_json(), indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class VerifyProblem:
    file: str
    reason: str


def check_files(
    root: Path, manifest: Manifest, on_bytes: Callable[[int], None] | None = None
) -> list[VerifyProblem]:
    """Compare a directory with a manifest by full sha256: every listed file, nothing else, regular files only."""
    problems: list[VerifyProblem] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST_NAME:
            continue
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            problems.append(VerifyProblem(rel, "not a regular file"))
        elif path.is_file() and rel not in manifest.files:
            problems.append(VerifyProblem(rel, "not in the manifest"))
    for name, entry in sorted(manifest.files.items()):
        path = root / name
        if path.is_symlink() or not path.is_file():
            problems.append(VerifyProblem(name, "missing"))
            continue
        size = path.stat().st_size
        if size != entry.size:
            problems.append(VerifyProblem(name, f"size {size} != {entry.size}"))
        elif sha256_file(path) != entry.sha256:
            problems.append(VerifyProblem(name, "sha256 mismatch"))
        if on_bytes is not None:
            on_bytes(entry.size)
    return problems
