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

import json
import logging
import os
import secrets
import shutil
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

from filelock import FileLock, Timeout

from rbln_eval.util.atomic import publish_dir, write_atomic
from rbln_eval.util.units import utc_now
from rbln_eval.util.constants import DEFAULT_STORE, DIGEST_RE, STORE_ENV
from rbln_eval.errors import (
    BuildFailedError,
    BundleNotFoundError,
    CorruptBundleError,
    StoreNotWritableError,
)
from rbln_eval.identity import BundleKey
from rbln_eval.store.bundle import (
    BUILD_LOG_NAME,
    MANIFEST_NAME,
    Bundle,
    Manifest,
    check_files,
    scan_files,
    write_manifest,
)
from rbln_eval.store.aliases import AliasTable
from rbln_eval.store.refs import is_digest, match_reference
from rbln_eval.store.upkeep import Upkeep

logger = logging.getLogger(__name__)



def default_store_path() -> Path:
    return Path(os.environ.get(STORE_ENV) or DEFAULT_STORE)


# --------------------------------------------------------------------------------------------------
# Manifest and bundle
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------------


class Store(AliasTable, Upkeep):
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
                created=utc_now(),
                build_seconds=time.monotonic() - started,
                info=info,
            )
            write_manifest(tmp, manifest)
        except Exception as exc:
            self.record_failure(key, tmp, exc)
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
