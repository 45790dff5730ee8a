"""Remotes: share bundles through an HF Hub repo or a directory.

A remote holds bundles by digest plus an index (digest -> where the bundle is, its manifest's sha256 and
key fields), so a bundle is found by key without listing files. Pulls verify every file against the
manifest before the bundle appears in the local store.
"""

from __future__ import annotations

from rbln_eval.errors import RblnEvalError
from rbln_eval.store import Bundle, Store
from rbln_eval.errors import BundleRefusedError, RemoteConfigError, RemoteError
from rbln_eval.remotes.base import Remote, RemoteBundle
from rbln_eval.remotes.config import HF_SCHEME, RemoteSpec, add_spec, check_repo_id, get_spec, load_specs, remove_spec, spec_from_location


def open_remote(spec: RemoteSpec) -> Remote:
    """The remote a configuration entry describes."""
    if spec.kind == "hf":
        from rbln_eval.remotes.hub import HubRemote

        return HubRemote(spec.name, spec.repo or "", private=spec.private)
    from rbln_eval.remotes.directory import DirectoryRemote

    return DirectoryRemote(spec.name, spec.path or "")


def configured_remotes(store: Store, only: str | None = None) -> list[Remote]:
    """The store's remotes in order (just ``only`` if given)."""
    if only is not None:
        return [open_remote(get_spec(store, only))]
    return [open_remote(spec) for spec in load_specs(store)]


def push_target(store: Store, repo: str | None = None, remote: str | None = None, private: bool = False) -> Remote:
    """Where a push goes: the Hub repo ``repo``, the configured remote ``remote``, or the only configured one."""
    if repo and remote:
        raise RemoteConfigError("pass either {repo} ORG/NAME or {remote} NAME, not both")
    if repo:
        from rbln_eval.remotes.hub import HubRemote

        return HubRemote(f"{HF_SCHEME}{repo}", check_repo_id(repo), private=private)
    if remote:
        return open_remote(get_spec(store, remote))
    remotes = configured_remotes(store)
    if len(remotes) != 1:
        raise RemoteConfigError(f"{len(remotes)} remotes are configured", "pass {repo} ORG/NAME or {remote} NAME")
    return remotes[0]


def push_bundle(store: Store, bundle: Bundle, remote: Remote) -> tuple[RemoteBundle, bool]:
    """Re-hash ``bundle`` against its manifest, then publish it on ``remote``; returns it and whether it was uploaded."""
    problems = store.verify(bundle)
    if problems:
        raise RblnEvalError(
            f"bundle {bundle.digest[:12]} fails verification ({problems[0].file}: {problems[0].reason})",
            "remove it with `rbln-eval rm` and rebuild; nothing was pushed",
        )
    return remote.push(bundle)


__all__ = [
    "HF_SCHEME",
    "BundleRefusedError",
    "Remote",
    "RemoteBundle",
    "RemoteConfigError",
    "RemoteError",
    "RemoteSpec",
    "add_spec",
    "configured_remotes",
    "get_spec",
    "load_specs",
    "open_remote",
    "push_bundle",
    "push_target",
    "remove_spec",
    "spec_from_location",
]
