"""The local content-addressed bundle store.

Layout under the store root (``./artifacts`` unless ``--store`` or ``$RBLN_EVAL_STORE`` say otherwise)::

    bundles/<digest>/            one published bundle: the model files + MANIFEST_NAME
    refs/<quoted alias>          text file holding a digest (human aliases such as ``model@rev:tag``)
    failures/<digest>.json       the last failed build of a key, with the tail of its log
    tmp/<digest>.<host>.<pid>.<rand>/   builds in progress (same filesystem, so publishing is a rename)
    locks/<digest>.lock          per-key build lock

A bundle is built in ``tmp/``, its manifest (key fields, sha256 and size of every file, build time and
log) written and everything fsynced, then renamed into ``bundles/``. The rename is the commit point and
succeeds only if no bundle of that digest exists yet (rename-if-absent), so correctness never depends on
the lock; the lock only spares concurrent builders the duplicate work. Looking a bundle up reads the
manifest and stats the files: its cost does not grow with bundle bytes. :meth:`Store.verify` re-hashes.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import secrets
import shutil
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, Callable, Iterator, Mapping
from urllib.parse import quote, unquote

from filelock import FileLock, Timeout

from rbln_eval.util.atomic import publish_dir, write_atomic
from rbln_eval.util.constants import DEFAULT_STORE, DIGEST_RE, HEX_RE, STORE_ENV
from rbln_eval.errors import (
    BuildFailedError,
    BundleNotFoundError,
    CorruptBundleError,
    RblnEvalError,
    StoreNotWritableError,
)
from rbln_eval.util.hashing import sha256_file
from rbln_eval.identity import BundleKey
from rbln_eval.store.refs import is_digest, match_reference

logger = logging.getLogger(__name__)

MANIFEST_NAME = "rbln-eval-manifest.json"
BUILD_LOG_NAME = "rbln-eval-build.log"
MANIFEST_SCHEMA = 1
_LOG_TAIL_LINES = 200
_STALE_TMP_SECONDS = 7 * 24 * 3600


def default_store_path() -> Path:
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


# --------------------------------------------------------------------------------------------------
# Manifest and bundle
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Build context and results
# --------------------------------------------------------------------------------------------------


@dataclass
class BuildContext:
    """Handed to a builder: fill :attr:`path` with the bundle's files; write progress to :attr:`log`."""

    path: Path
    key: BundleKey
    log: IO[str]

    def write_log(self, message: str) -> None:
        self.log.write(message.rstrip("\n") + "\n")
        self.log.flush()


Builder = Callable[[BuildContext], None]


@dataclass(frozen=True)
class BuildResult:
    bundle: Bundle
    built: bool


@dataclass(frozen=True)
class VerifyProblem:
    file: str
    reason: str


@dataclass(frozen=True)
class GcItem:
    kind: str  # "tmp" | "failure" | "ref" | "bundle"
    path: Path


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


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------


class Store:
    """A directory of content-addressed bundles with aliases, failure records and build locks."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_store_path()

    # layout -------------------------------------------------------------------------------------
    @property
    def bundles_dir(self) -> Path:
        return self.root / "bundles"

    @property
    def refs_dir(self) -> Path:
        return self.root / "refs"

    @property
    def failures_dir(self) -> Path:
        return self.root / "failures"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    @property
    def locks_dir(self) -> Path:
        return self.root / "locks"

    def bundle_path(self, digest: str) -> Path:
        return self.bundles_dir / digest

    def check_path(self) -> None:
        """Fail early if the store path cannot be a directory (it, or an ancestor, is a file)."""
        for candidate in (self.root, *self.root.absolute().parents):
            if candidate.exists():
                if not candidate.is_dir():
                    raise StoreNotWritableError(
                        f"store {self.root} is not usable: {candidate} is not a directory",
                        f"pass {{store}} DIR or set {STORE_ENV}",
                    )
                return

    def ensure_writable(self) -> None:
        """Create the layout; raise one clear error if the store cannot be written."""
        try:
            for sub in (self.bundles_dir, self.refs_dir, self.failures_dir, self.tmp_dir, self.locks_dir):
                sub.mkdir(parents=True, exist_ok=True)
            probe = self.tmp_dir / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreNotWritableError(
                f"store {self.root} is not writable ({exc.strerror or exc})", f"pass {{store}} DIR or set {STORE_ENV}"
            ) from None

    # lookup -------------------------------------------------------------------------------------
    def lookup(self, digest: str) -> Bundle | None:
        """The published bundle for ``digest``, checked cheaply; ``None`` if absent.

        Raises :class:`CorruptBundleError` if a bundle directory exists but does not check out: a damaged
        bundle is never served, and never silently replaced.
        """
        path = self.bundle_path(digest)
        if not path.is_dir():
            return None
        return Bundle.open(path, expected_digest=digest)

    def digests(self) -> list[str]:
        if not self.bundles_dir.is_dir():
            return []
        return sorted(p.name for p in self.bundles_dir.iterdir() if DIGEST_RE.match(p.name) and p.is_dir())

    def resolve(self, ref: str) -> Bundle:
        """A bundle by full digest, alias, bundle directory path or unique digest prefix."""
        ref = ref.strip()
        if not ref:
            raise BundleNotFoundError("empty bundle reference", "pass a digest, a digest prefix, an alias or a path")
        path = Path(ref).expanduser()
        if not is_digest(ref) and self.read_ref(ref) is None and (path / MANIFEST_NAME).is_file():
            return Bundle.open(path)
        aliased = self.read_ref(ref)
        digest = match_reference(ref, self.digests(), lambda _: [] if aliased is None else [aliased], "")
        if aliased is not None and digest == aliased and self.lookup(aliased) is None:
            raise BundleNotFoundError(
                f"alias {ref!r} points to bundle {aliased[:12]}, which is not in store {self.root}",
                "rebuild it or run `rbln-eval gc` to drop the alias",
            )
        bundle = self.lookup(digest) if digest is not None else None
        if bundle is not None:
            return bundle
        if is_digest(ref):
            raise BundleNotFoundError(f"no bundle {ref[:12]} in store {self.root}", "see `rbln-eval ls`")
        raise BundleNotFoundError(f"no bundle matches {ref!r} in store {self.root}", "see `rbln-eval ls`")

    def bundles(self) -> Iterator[tuple[str, Bundle | CorruptBundleError]]:
        """``(digest, bundle)`` for every stored bundle; a damaged one comes back as its error."""
        for digest in self.digests():
            try:
                bundle = self.lookup(digest)
            except CorruptBundleError as exc:
                yield digest, exc
            else:
                if bundle is not None:
                    yield digest, bundle

    # build --------------------------------------------------------------------------------------
    def lock(self, digest: str) -> FileLock:
        return FileLock(str(self.locks_dir / f"{digest}.lock"))

    @contextmanager
    def _locked(self, digest: str, on_wait: Callable[[str], None] | None) -> Iterator[None]:
        lock = self.lock(digest)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait(f"another process is building {digest[:12]}; waiting for it")
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    def get_or_build(
        self,
        key: BundleKey,
        builder: Builder,
        *,
        info: Mapping[str, Any] | None = None,
        retry_failed: bool = True,
        on_wait: Callable[[str], None] | None = None,
        force: bool = False,
    ) -> BuildResult:
        """The bundle for ``key``: the stored one, or built once by ``builder`` and published atomically.

        Concurrent callers for one key wait for the first builder and reuse its bundle. A failed build leaves
        a failure record (see :meth:`failure`); the next call tries again unless ``retry_failed`` is false.
        ``force`` rebuilds even if the bundle exists (or is damaged); the old one is replaced only once the
        new one is complete.
        """
        digest = key.digest
        if not force:
            bundle = self.lookup(digest)
            if bundle is not None:
                return BuildResult(bundle, built=False)
        self.ensure_writable()
        lock_path = self.locks_dir / f"{digest}.lock"
        fresh_lock = not lock_path.exists()
        try:
            with self._locked(digest, on_wait):
                if not force:
                    bundle = self.lookup(digest)
                    if bundle is not None:
                        return BuildResult(bundle, built=False)
                failure = self.failure(digest)
                if failure is not None and not retry_failed:
                    raise BuildFailedError(
                        f"the last build of {digest[:12]} failed ({failure.get('error', 'unknown error')}); "
                        f"see {self.failures_dir / (digest + '.json')}, or retry"
                    )
                self._clean_tmp(digest)
                return self._build(key, builder, dict(info or {}), replace=force)
        except (KeyboardInterrupt, SystemExit):
            if fresh_lock:  # an interrupted build leaves the store as it was (publishing never relies on the lock)
                lock_path.unlink(missing_ok=True)
            raise

    def _new_tmp(self, digest: str) -> Path:
        name = f"{digest}.{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
        path = self.tmp_dir / name
        path.mkdir(parents=True)
        return path

    def _build(self, key: BundleKey, builder: Builder, info: dict[str, Any], replace: bool = False) -> BuildResult:
        digest = key.digest
        tmp = self._new_tmp(digest)
        started = time.monotonic()
        try:
            with open(tmp / BUILD_LOG_NAME, "a", encoding="utf-8") as log:
                builder(BuildContext(path=tmp, key=key, log=log))
            manifest = Manifest(
                digest=digest,
                key=key,
                files=scan_files(tmp),
                created=_utcnow(),
                build_seconds=time.monotonic() - started,
                info=info,
            )
            write_manifest(tmp, manifest)
        except Exception as exc:
            self._record_failure(key, tmp, exc)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except BaseException:  # interrupted: no failure record, nothing left behind
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        final = self.bundle_path(digest)
        if replace and final.exists():
            os.rename(final, self.tmp_dir / f"deleted.{digest}.{secrets.token_hex(4)}")
        existing = self._publish(tmp, final)
        if existing is not None:  # someone published first: theirs is as good as ours
            return BuildResult(existing, built=False)
        for leftover in self.tmp_dir.glob(f"deleted.{digest}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
        self.clear_failure(digest)
        return BuildResult(Bundle(path=final, manifest=manifest), built=True)

    def adopt(
        self,
        manifest: Manifest,
        fill: Callable[[Path], None],
        *,
        manifest_text: str | None = None,
        on_wait: Callable[[str], None] | None = None,
    ) -> BuildResult:
        """Publish a bundle whose files come from elsewhere (a remote), checked against ``manifest``.

        ``fill(path)`` writes the files into a temporary directory. Every file is then checked against the
        manifest (sha256 and size); a missing, altered, unexpected or non-regular file raises
        :class:`CorruptBundleError` and nothing is published. ``manifest_text`` is written verbatim (so the
        published manifest is byte-identical to the remote one); it must parse to ``manifest``.
        """
        digest = manifest.digest
        if manifest_text is not None and Manifest.from_json(json.loads(manifest_text), "the adopted manifest") != manifest:
            raise CorruptBundleError(f"bundle {digest[:12]}: the manifest text does not match the manifest")
        bundle = self.lookup(digest)
        if bundle is not None:
            return BuildResult(bundle, built=False)
        self.ensure_writable()
        lock_path = self.locks_dir / f"{digest}.lock"
        fresh_lock = not lock_path.exists()
        try:
            return self._adopt_locked(manifest, fill, manifest_text, on_wait)
        except BaseException:
            if fresh_lock:  # a refused adoption leaves no trace (publishing never relies on the lock)
                lock_path.unlink(missing_ok=True)
            raise

    def _adopt_locked(
        self,
        manifest: Manifest,
        fill: Callable[[Path], None],
        manifest_text: str | None,
        on_wait: Callable[[str], None] | None,
    ) -> BuildResult:
        digest = manifest.digest
        with self._locked(digest, on_wait):
            bundle = self.lookup(digest)
            if bundle is not None:
                return BuildResult(bundle, built=False)
            self._clean_tmp(digest)
            tmp = self._new_tmp(digest)
            try:
                fill(tmp)
                problems = check_files(tmp, manifest)
                if problems:
                    shown = "; ".join(f"{p.file}: {p.reason}" for p in problems[:3])
                    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
                    raise CorruptBundleError(f"refused bundle {digest[:12]}: {shown}{more}; nothing was stored")
                if manifest_text is None:
                    write_manifest(tmp, manifest)
                else:
                    write_atomic(tmp / MANIFEST_NAME, manifest_text)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            final = self.bundle_path(digest)
            existing = self._publish(tmp, final)
            if existing is not None:
                return BuildResult(existing, built=False)
            return BuildResult(Bundle(path=final, manifest=manifest), built=True)

    def _publish(self, tmp: Path, final: Path) -> Bundle | None:
        """Rename ``tmp`` to ``final`` if no bundle is there; else discard ``tmp`` and return the one that is."""
        try:
            published = publish_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if published:
            return None
        shutil.rmtree(tmp, ignore_errors=True)
        existing = self.lookup(final.name)
        if existing is None:
            raise CorruptBundleError(f"bundle {final.name[:12]} could not be published in {self.bundles_dir}")
        return existing

    def _clean_tmp(self, digest: str) -> None:
        """Remove leftovers of builds of ``digest`` that died (called with the key lock held)."""
        if not self.tmp_dir.is_dir():
            return
        for path in self.tmp_dir.glob(f"{digest}.*"):
            shutil.rmtree(path, ignore_errors=True)

    # failures -----------------------------------------------------------------------------------
    def _record_failure(self, key: BundleKey, tmp: Path, exc: BaseException) -> None:
        try:
            lines = (tmp / BUILD_LOG_NAME).read_text(errors="replace").splitlines()
        except OSError:
            lines = []
        record = {
            "digest": key.digest,
            "key": key.fields(),
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exception(exc),
            "time": _utcnow(),
            "log_tail": lines[-_LOG_TAIL_LINES:],
        }
        try:
            self.failures_dir.mkdir(parents=True, exist_ok=True)
            write_atomic(self.failures_dir / f"{key.digest}.json", json.dumps(record, indent=2))
        except OSError as write_error:
            logger.warning("could not record the failed build of %s: %s", key.digest[:12], write_error)

    def failure(self, digest: str) -> dict[str, Any] | None:
        path = self.failures_dir / f"{digest}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"error": "unreadable failure record"}

    def clear_failure(self, digest: str) -> None:
        (self.failures_dir / f"{digest}.json").unlink(missing_ok=True)

    def failures(self) -> dict[str, dict[str, Any]]:
        if not self.failures_dir.is_dir():
            return {}
        return {p.stem: self.failure(p.stem) or {} for p in sorted(self.failures_dir.glob("*.json"))}

    # refs ---------------------------------------------------------------------------------------
    @staticmethod
    def _ref_filename(alias: str) -> str:
        return quote(alias, safe="@:+-_.,=")

    def read_ref(self, alias: str) -> str | None:
        try:
            digest = (self.refs_dir / self._ref_filename(alias)).read_text().strip()
        except (OSError, ValueError):
            return None
        return digest if DIGEST_RE.match(digest) else None

    def set_ref(self, alias: str, digest: str) -> None:
        """Point ``alias`` at ``digest`` (atomic replace)."""
        if not alias or alias.strip() != alias or HEX_RE.match(alias) or "\n" in alias:
            raise RblnEvalError(
                f"invalid alias {alias!r}: use a name such as model@revision:tag (not a bare hex string)"
            )
        if self.lookup(digest) is None:
            raise BundleNotFoundError(f"no bundle {digest[:12]} in store {self.root}")
        self.ensure_writable()
        write_atomic(self.refs_dir / self._ref_filename(alias), digest + "\n")

    def refs(self) -> dict[str, str]:
        if not self.refs_dir.is_dir():
            return {}
        out: dict[str, str] = {}
        for path in sorted(self.refs_dir.iterdir()):
            if path.name.startswith("."):
                continue
            digest = self.read_ref(unquote(path.name))
            if digest is not None:
                out[unquote(path.name)] = digest
        return out

    def remove_ref(self, alias: str) -> bool:
        path = self.refs_dir / self._ref_filename(alias)
        if not path.exists():
            return False
        path.unlink()
        return True

    # maintenance --------------------------------------------------------------------------------
    def verify(self, bundle: Bundle, on_bytes: Callable[[int], None] | None = None) -> list[VerifyProblem]:
        """Re-hash every file; list missing, resized, altered, unexpected and non-regular files."""
        return check_files(bundle.path, bundle.manifest, on_bytes)

    def remove(self, bundle: Bundle) -> list[str]:
        """Delete a stored bundle and the aliases that point to it; returns the removed aliases."""
        if bundle.path.parent != self.bundles_dir:
            raise RblnEvalError(f"{bundle.path} is not in store {self.root}; nothing removed")
        self.ensure_writable()
        removed = [alias for alias, digest in self.refs().items() if digest == bundle.digest]
        for alias in removed:
            self.remove_ref(alias)
        self._discard_dir(bundle.path)
        return removed

    def _discard_dir(self, path: Path) -> None:
        """Make ``path`` disappear atomically (rename into tmp), then delete it."""
        graveyard = self.tmp_dir / f"deleted.{path.name}.{secrets.token_hex(4)}"
        os.rename(path, graveyard)
        shutil.rmtree(graveyard, ignore_errors=True)

    def gc(self, *, unreferenced: bool = False, dry_run: bool = False) -> list[GcItem]:
        """Remove abandoned temporaries, failure records, dangling aliases and (optionally) unaliased bundles."""
        if not self.root.is_dir():
            return []
        if not dry_run:
            self.ensure_writable()
        items: list[GcItem] = []
        if self.tmp_dir.is_dir():
            for path in sorted(self.tmp_dir.iterdir()):
                if self._tmp_is_abandoned(path):
                    items.append(GcItem("tmp", path))
        items += [GcItem("failure", self.failures_dir / f"{d}.json") for d in self.failures()]
        live = set(self.digests())
        refs = self.refs()
        items += [GcItem("ref", self.refs_dir / self._ref_filename(a)) for a, d in refs.items() if d not in live]
        if unreferenced:
            referenced = set(refs.values())
            items += [GcItem("bundle", self.bundle_path(d)) for d in sorted(live - referenced)]
        if not dry_run:
            for item in items:
                if item.kind == "bundle":
                    self._discard_dir(item.path)
                elif item.path.is_dir():
                    shutil.rmtree(item.path, ignore_errors=True)
                else:
                    item.path.unlink(missing_ok=True)
        return items

    def _tmp_is_abandoned(self, path: Path) -> bool:
        if path.name.startswith(".probe."):
            return True
        if path.name.startswith("deleted."):
            return True
        digest = path.name.split(".", 1)[0]
        if not DIGEST_RE.match(digest):
            return time.time() - path.stat().st_mtime > _STALE_TMP_SECONDS
        lock = self.lock(digest)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False  # its builder holds the lock: still running
        lock.release()
        return True

    def size_bytes(self) -> int:
        total = 0
        if self.root.is_dir():
            for dirpath, _dirs, files in os.walk(self.root):
                for name in files:
                    try:
                        total += os.lstat(os.path.join(dirpath, name)).st_size
                    except OSError:
                        pass
        return total
