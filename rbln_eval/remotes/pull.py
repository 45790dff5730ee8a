"""Find a bundle on remotes and pull it into the local store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rbln_eval.util.constants import DIGEST_RE
from rbln_eval.errors import RblnEvalError
from rbln_eval.store import Bundle, Store
from rbln_eval.remotes import HF_SCHEME, Remote, RemoteBundle, RemoteConfigError, RemoteError
from rbln_eval.remotes.config import check_repo_id

Notify = Callable[[str], None]


@dataclass(frozen=True)
class Pulled:
    bundle: Bundle
    source: RemoteBundle
    fetched: bool  # False: the store had it already


def parse_hf_ref(ref: str) -> tuple[str, str | None]:
    """``hf://ORG/NAME[@REV]`` -> (repo, revision)."""
    body = ref[len(HF_SCHEME):]
    repo, _, revision = body.partition("@")
    return check_repo_id(repo.rstrip("/")), (revision or None)


def pull_ref(ref: str, store: Store, remotes: list[Remote]) -> Pulled:
    """Pull ``ref``: ``hf://ORG/NAME[@REV]``, or a digest, unique prefix or alias found on ``remotes``."""
    if ref.startswith(HF_SCHEME):
        from rbln_eval.remotes.hub import HubRemote

        repo, revision = parse_hf_ref(ref)
        remote: Remote = HubRemote(f"{HF_SCHEME}{repo}", repo)
        found = remote.at_revision(revision)  # type: ignore[attr-defined]
        return _fetch(remote, found, store)
    if not remotes:
        raise RemoteConfigError(
            f"no remote to pull {ref!r} from: add one with `rbln-eval remote add` or pull hf://ORG/NAME@REV"
        )
    for remote in remotes:
        found = remote.resolve(ref)
        if found is not None:
            return _fetch(remote, found, store)
    names = ", ".join(r.name for r in remotes)
    raise RemoteError(f"no bundle matches {ref!r} on {names}", "see `rbln-eval remote ls --bundles`")


def _fetch(remote: Remote, found: RemoteBundle, store: Store) -> Pulled:
    existing = store.lookup(found.digest)
    if existing is not None:
        return Pulled(existing, found, fetched=False)
    bundle = remote.fetch(found, store)
    _set_alias(store, bundle)
    return Pulled(bundle, found, fetched=True)


def _set_alias(store: Store, bundle: Bundle) -> None:
    alias = bundle.manifest.info.get("alias")
    if isinstance(alias, str) and alias and store.read_ref(alias) is None:
        try:
            store.set_ref(alias, bundle.digest)
        except (RblnEvalError, OSError):  # an alias is a convenience; the bundle is what matters
            pass


def pull_digest(digest: str, store: Store, remotes: list[Remote], notify: Notify | None = None) -> Pulled | None:
    """The bundle of ``digest`` from the first remote that has it, or ``None``.

    A remote that cannot be reached is skipped with a message; a bundle that fails verification raises
    :class:`~rbln_eval.remotes.BundleRefusedError`.
    """
    assert DIGEST_RE.match(digest)
    for remote in remotes:
        try:
            found = remote.find(digest)
        except RemoteError as exc:
            if notify is not None:
                notify(f"skipping remote {remote.name}: {exc}")
            continue
        if found is None:
            continue
        if notify is not None:
            notify(f"pulling {digest[:12]} from remote {remote.name} ({found.location})")
        return _fetch(remote, found, store)
    return None
