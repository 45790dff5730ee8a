"""A Hugging Face Hub repo as a remote.

Layout of the repo::

    main                     rbln-eval-index.json: digest -> revision, commit, manifest sha256, key fields
    bundle-<digest>          one branch per bundle; its root is the bundle directory itself (the optimum-rbln
                             files + rbln-eval-manifest.json), so
                             ``RBLNAutoModelForCausalLM.from_pretrained(repo, revision="bundle-<digest>", export=False)``
                             loads it

A bundle branch gets exactly one commit and is never written again (a pushed bundle is immutable per
digest). The index is updated with ``parent_commit`` and retried with backoff when another push got there
first (409/412). Everything goes through huggingface_hub; it reads ``HF_ENDPOINT``, ``HF_TOKEN`` and
``HF_HUB_OFFLINE`` itself.
"""

from __future__ import annotations

import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from rbln_eval.util.constants import COMMIT_RE
from rbln_eval.store import MANIFEST_NAME, Bundle, Store
from rbln_eval.errors import BundleRefusedError, RemoteError
from rbln_eval.remotes.base import (
    RemoteBundle,
    check_listed_manifest,
    dump_index,
    empty_index,
    index_entry,
    match_index,
    parse_index,
    parse_remote_manifest,
)
from rbln_eval.remotes.progress import copy_file, tqdm_into, transfer

INDEX_NAME = "rbln-eval-index.json"
BRANCH_PREFIX = "bundle-"
#: Files the Hub itself puts in a repo; tolerated next to a bundle's files.
HUB_FILES = frozenset({".gitattributes"})
_ATTEMPTS = 8
T = TypeVar("T")


def branch_name(digest: str) -> str:
    return f"{BRANCH_PREFIX}{digest}"


def _scrub(text: str) -> str:
    """Remove the user's token from a message, wherever it appears."""
    from huggingface_hub import get_token

    token = get_token()
    return text.replace(token, "***") if token else text


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return _scrub(" ".join(lines[:2]))[:300] or type(exc).__name__


@contextmanager
def hub_errors(where: str) -> Iterator[None]:
    """Turn huggingface_hub and network errors into one-line :class:`RemoteError` messages."""
    import httpx
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError:
        raise RemoteError(f"{where}: repository not found or not accessible; check the name and HF_TOKEN") from None
    except RevisionNotFoundError:
        raise RemoteError(f"{where}: revision not found; see the repo's branches and tags") from None
    except RemoteEntryNotFoundError:
        raise RemoteError(f"{where}: file not found on the Hub") from None
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise RemoteError(f"{where}: the Hub answered {status}: {_first_line(exc)}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        if constants.HF_HUB_OFFLINE:
            raise RemoteError(f"{where}: not in the HF cache and HF_HUB_OFFLINE is set") from None
        raise RemoteError(f"{where}: cannot reach {constants.ENDPOINT} and the files are not in the HF cache") from None
    except (httpx.HTTPError, ConnectionError, TimeoutError) as exc:
        raise RemoteError(f"{where}: cannot reach the Hub ({type(exc).__name__}: {_first_line(exc)})") from None


def retrying(where: str, action: Callable[[], T]) -> T:
    """Run ``action``; when a racing commit wins (409/412), back off and run it again."""
    from huggingface_hub.errors import HfHubHTTPError

    for attempt in range(_ATTEMPTS):
        with hub_errors(where):
            try:
                return action()
            except HfHubHTTPError as exc:
                if _status(exc) not in (409, 412) or attempt == _ATTEMPTS - 1:
                    raise
        _backoff(attempt)
    raise AssertionError("unreachable")


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def _backoff(attempt: int) -> None:
    time.sleep(min(0.2 * 2**attempt, 5.0) * (0.5 + random.random()))


class HubRemote:
    """Bundles shared through one Hub model repo."""

    kind = "hf"

    def __init__(self, name: str, repo: str, private: bool = False) -> None:
        self.name = name
        self.repo = repo
        self.private = private

    @property
    def location(self) -> str:
        return f"hf://{self.repo}"

    def _api(self):
        from huggingface_hub import HfApi

        return HfApi()

    def _download(self, filename: str, revision: str, **kwargs: Any) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.repo, filename, revision=revision, **kwargs))

    # reading ------------------------------------------------------------------------------------
    def read_index(self, revision: str = "main", must_exist: bool = False) -> dict[str, Any]:
        """The index on ``main``: empty if the file (or, unless ``must_exist``, the repo) does not exist yet."""
        from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        missing: tuple[type[BaseException], ...] = (RemoteEntryNotFoundError,)
        if not must_exist:
            missing += (RepositoryNotFoundError, RevisionNotFoundError)
        with hub_errors(self.location):
            try:
                text = self._download(INDEX_NAME, revision).read_bytes()
            except missing:
                return empty_index()
        return parse_index(text, self.location)

    def _make(self, digest: str, entry: dict[str, Any]) -> RemoteBundle:
        revision = str(entry.get("revision") or branch_name(digest))
        commit = entry.get("commit")
        return RemoteBundle(
            remote=self.name,
            digest=digest,
            revision=revision,
            location=f"{self.location}@{revision}",
            manifest_sha256=entry.get("manifest_sha256"),
            commit=commit if isinstance(commit, str) and COMMIT_RE.match(commit) else None,
            size=entry.get("size"),
            alias=entry.get("alias"),
        )

    def find(self, digest: str) -> RemoteBundle | None:
        entry = self.read_index().get("bundles", {}).get(digest)
        return self._make(digest, entry) if isinstance(entry, dict) else None

    def resolve(self, ref: str) -> RemoteBundle | None:
        return match_index(self.read_index(), ref, self.location, self._make)

    def at_revision(self, revision: str | None) -> RemoteBundle:
        """A bundle named by ``hf://ORG/NAME@REV``: REV is a digest, prefix or alias in the index, or any git
        revision whose root holds a bundle. Without REV the repo must hold exactly one bundle."""
        index = self.read_index(must_exist=True)
        if revision is None:
            bundles = index.get("bundles", {})
            if len(bundles) != 1:
                raise RemoteError(
                    f"{self.location} holds {len(bundles)} bundles: name one with {self.location}@DIGEST"
                )
            digest = next(iter(bundles))
            return self._make(digest, bundles[digest])
        found = match_index(index, revision, self.location, self._make)
        if found is not None:
            return found
        with hub_errors(f"{self.location}@{revision}"):
            text = self._download(MANIFEST_NAME, revision).read_bytes()
        manifest = parse_remote_manifest(text, f"{self.location}@{revision}")
        return RemoteBundle(self.name, manifest.digest, revision, f"{self.location}@{revision}")

    # pull ---------------------------------------------------------------------------------------
    def fetch(self, found: RemoteBundle, store: Store) -> Bundle:
        from huggingface_hub import constants

        where = found.location
        revision = found.commit or found.revision
        with hub_errors(where):
            manifest_path = self._download(MANIFEST_NAME, revision)
        text = manifest_path.read_bytes()
        manifest = check_listed_manifest(text, found, where)
        commit = manifest_path.parent.name if COMMIT_RE.match(manifest_path.parent.name) else revision
        if not constants.HF_HUB_OFFLINE:
            with hub_errors(where):
                listed = set(self._api().list_repo_files(self.repo, revision=commit))
            extra = sorted(listed - set(manifest.files) - {MANIFEST_NAME} - HUB_FILES)
            if extra:
                raise BundleRefusedError(
                    f"refused {where}: {extra[0]} is not in the manifest"
                    + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                    + "; nothing was stored"
                )

        def fill(tmp: Path) -> None:
            with transfer(f"pull {found.digest[:12]}", manifest.total_size) as advance:
                for name, entry in sorted(manifest.files.items()):
                    downloaded = [0]

                    def on_bytes(n: int) -> None:
                        downloaded[0] += n
                        advance(n)

                    with hub_errors(f"{where}: {name}"):
                        source = self._download(name, commit, tqdm_class=tqdm_into(on_bytes))
                    size, digest = copy_file(source, tmp / name, lambda n: None)
                    advance(entry.size - downloaded[0])
                    if (size, digest) != (entry.size, entry.sha256):
                        _evict(source)  # so that a retry downloads it again
                        reason = f"size {size} != {entry.size}" if size != entry.size else "sha256 mismatch"
                        raise BundleRefusedError(f"refused {where}: {name}: {reason}; nothing was stored")

        return store.adopt(manifest, fill, manifest_text=text.decode()).bundle

    # push ---------------------------------------------------------------------------------------
    def push(self, bundle: Bundle) -> tuple[RemoteBundle, bool]:
        """Upload ``bundle`` to its own branch (once) and record it in the index on ``main``."""
        api = self._api()
        digest = bundle.digest
        branch = branch_name(digest)
        manifest_text = (bundle.path / MANIFEST_NAME).read_text()
        with hub_errors(self.location):
            api.create_repo(self.repo, private=self.private, exist_ok=True)
        commit, uploaded = retrying(
            f"{self.location}@{branch}", lambda: self._push_branch(api, bundle, branch, manifest_text)
        )
        entry = index_entry(bundle.manifest, manifest_text, branch, commit)
        retrying(f"{self.location} (index)", lambda: self._update_index(api, digest, entry))
        return self._make(digest, entry), uploaded

    def _branch_head(self, api, branch: str) -> tuple[str | None, str]:
        refs = api.list_repo_refs(self.repo)
        heads = {ref.name: ref.target_commit for ref in refs.branches}
        return heads.get(branch), heads["main"]

    def _push_branch(self, api, bundle: Bundle, branch: str, manifest_text: str) -> tuple[str, bool]:
        """Commit the bundle onto its branch unless it is there already; returns (commit, uploaded now)."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        head, _main = self._branch_head(api, branch)
        if head is None:
            api.create_branch(self.repo, branch=branch, exist_ok=True)
            head, _main = self._branch_head(api, branch)
            if head is None:
                raise RemoteError(f"{self.location}: could not create branch {branch}")
        present = set(api.list_repo_files(self.repo, revision=head))
        if MANIFEST_NAME in present:
            text = self._download(MANIFEST_NAME, head).read_bytes()
            parse_remote_manifest(text, f"{self.location}@{branch}", bundle.digest)
            return head, False
        operations: list[Any] = [CommitOperationDelete(path) for path in sorted(present - set(bundle.manifest.files) - HUB_FILES)]
        with transfer(f"push {bundle.digest[:12]}", bundle.manifest.total_size) as advance:
            for name, entry in sorted(bundle.manifest.files.items()):
                operations.append(CommitOperationAdd(name, str(bundle.path / name)))  # hashes the file
                advance(entry.size)
        operations.append(CommitOperationAdd(MANIFEST_NAME, manifest_text.encode()))
        info = api.create_commit(
            self.repo, operations, commit_message=f"rbln-eval bundle {bundle.digest[:12]}",
            revision=branch, parent_commit=head,
        )
        return info.oid, True

    def _update_index(self, api, digest: str, entry: dict[str, Any]) -> None:
        from huggingface_hub import CommitOperationAdd

        _head, main = self._branch_head(api, "main")
        index = self.read_index(main)
        if index["bundles"].get(digest) == entry:
            return
        index["bundles"][digest] = entry
        api.create_commit(
            self.repo, [CommitOperationAdd(INDEX_NAME, dump_index(index).encode())],
            commit_message=f"rbln-eval index: add {digest[:12]}", revision="main", parent_commit=main,
        )



def _evict(path: Path) -> None:
    """Drop a downloaded file (its snapshot link and blob) from the HF cache."""
    try:
        blob = path.resolve()
        path.unlink(missing_ok=True)
        if blob != path:
            blob.unlink(missing_ok=True)
    except OSError:
        pass
