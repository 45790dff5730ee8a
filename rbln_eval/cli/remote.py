"""Sharing commands: push, pull, and the remotes a store looks at (remote add / ls / rm)."""

from __future__ import annotations

import json
from typing import Any, Optional

import typer

from rbln_eval.util.units import human_size
from rbln_eval.cli.options import RemoteOpt, StoreOpt, config_summary, err, open_store, out, typer_app

remote_app = typer_app(
    "Configure where bundles are shared: HF Hub repos and directories.\n\nExample: rbln-eval remote add team hf://my-org/compiled"
)


def push_command(
    ref: str = typer.Argument(..., help="Bundle to share: digest, prefix, alias or path."),
    repo: Optional[str] = typer.Option(None, "--repo", help="HF Hub model repo ORG/NAME (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo private."),
    remote: Optional[str] = typer.Option(None, "--remote", help="A configured remote instead of --repo."),
    store: StoreOpt = None,
) -> None:
    """Share a bundle on an HF Hub repo or a directory remote (verified first; immutable per digest).

    Example: rbln-eval push 3f2a9c --repo my-org/compiled --private
    """
    import time

    from rbln_eval.families.registry import family_of
    from rbln_eval.remotes import push_bundle, push_target

    st = open_store(store)
    bundle = st.resolve(ref)
    target = push_target(st, repo, remote, private)
    started = time.monotonic()
    pushed, uploaded = push_bundle(st, bundle, target)
    elapsed = time.monotonic() - started
    if uploaded:
        err.print(f"pushed {bundle.digest[:12]} ({human_size(bundle.manifest.total_size)}) in {elapsed:.1f}s", markup=False)
    else:
        err.print(f"{bundle.digest[:12]} is already on {target.location}: nothing uploaded", markup=False)
    out.print(f"{bundle.digest}  {pushed.location}", markup=False)
    if target.kind == "hf":
        family = family_of(bundle.key.model_class)
        if family.hub_loadable:
            hint = f'{family.auto_class}.from_pretrained("{target.repo}", revision="{pushed.revision}", export=False)'
        else:  # its torch artifacts travel as safetensors
            hint = f"rbln-eval pull {bundle.digest[:12]}, then rbln-eval run (or {family.auto_class} on its load view)"
        err.print(f"load it with: {hint}", markup=False)


def pull_command(
    ref: str = typer.Argument(..., help="Digest, prefix or alias on a remote, or hf://ORG/NAME@REV."),
    remote: RemoteOpt = None,
    store: StoreOpt = None,
) -> None:
    """Download a bundle from a remote, verify every file against its manifest, and add it to the store.

    Example: rbln-eval pull hf://my-org/compiled@bundle-3f2a9c...
    """
    import time

    from rbln_eval.remotes import configured_remotes
    from rbln_eval.remotes.pull import pull_ref

    st = open_store(store)
    remotes = [] if ref.startswith("hf://") else configured_remotes(st, only=remote)
    started = time.monotonic()
    pulled = pull_ref(ref, st, remotes)
    bundle = pulled.bundle
    if pulled.fetched:
        err.print(
            f"pulled {bundle.digest[:12]} from {pulled.source.location} ({len(bundle.manifest.files)} files, "
            f"{human_size(bundle.manifest.total_size)}) in {time.monotonic() - started:.1f}s, verified",
            markup=False,
        )
    else:
        err.print(f"{bundle.digest[:12]} is already in {st.root}: nothing pulled", markup=False)
    out.print(f"{bundle.digest}  {bundle.path}", markup=False)


def remote_add_command(
    name: str = typer.Argument(..., help="A short name, e.g. team."),
    location: str = typer.Argument(..., help="hf://ORG/NAME for a Hub repo, or a directory path."),
    private: bool = typer.Option(False, "--private", help="Hub repos: create the repo private on first push."),
    store: StoreOpt = None,
) -> None:
    """Add a remote; `compile` and `run --model` look there before compiling.

    Example: rbln-eval remote add nfs /shared/rbln-bundles
    """
    from rbln_eval.remotes import add_spec, spec_from_location

    spec = spec_from_location(name, location, private=private)  # checked before the store is touched
    add_spec(open_store(store), spec)
    out.print(f"added remote {spec.name}: {spec.location}", markup=False)


def remote_ls_command(
    store: StoreOpt = None,
    bundles: bool = typer.Option(False, "--bundles", help="Also list each remote's bundles (reads its index)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """List the configured remotes (in lookup order).

    Example: rbln-eval remote ls --bundles
    """
    from rbln_eval.remotes import load_specs, open_remote

    st = open_store(store)
    specs = load_specs(st)
    listing = []
    for spec in specs:
        entry = {"name": spec.name, "kind": spec.kind, "location": spec.location, "private": spec.private}
        if bundles:
            index = open_remote(spec).read_index()  # type: ignore[attr-defined]
            entry["bundles"] = [_remote_bundle(digest, item) for digest, item in sorted(index["bundles"].items())]
        listing.append(entry)
    if as_json:
        out.print_json(json.dumps(listing))
        return
    if not specs:
        out.print(f"no remotes configured in {st.root}: add one with `rbln-eval remote add`", markup=False)
        return
    for entry in listing:
        out.print(f"{entry['name']}\t{entry['kind']}\t{entry['location']}" + ("\tprivate" if entry["private"] else ""), markup=False)
        for item in entry.get("bundles", []):
            out.print(
                f"  {item['digest'][:12]}  {item['model']}  {config_summary(item['config'], None)}  {item['target']}  "
                f"{human_size(item['size'])}",
                markup=False,
            )


def _remote_bundle(digest: str, entry: dict[str, Any]) -> dict[str, Any]:
    """One bundle of a remote's index, as ``remote ls --json`` lists it."""
    key = entry.get("key", {})
    return {
        "digest": digest, "model": entry.get("model") or "", "config": key.get("compile", {}),
        "target": key.get("target", ""), "size": int(entry.get("size") or 0),
    }


def remote_rm_command(
    name: str = typer.Argument(..., help="The remote to forget (nothing on it is deleted)."),
    store: StoreOpt = None,
) -> None:
    """Forget a remote (its bundles stay where they are).

    Example: rbln-eval remote rm nfs
    """
    from rbln_eval.remotes import remove_spec

    spec = remove_spec(open_store(store), name)
    out.print(f"removed remote {spec.name} ({spec.location})", markup=False)


def register(app: typer.Typer) -> None:
    app.command("push")(push_command)
    app.command("pull")(pull_command)
    remote_app.command("add")(remote_add_command)
    remote_app.command("ls")(remote_ls_command)
    remote_app.command("rm")(remote_rm_command)
    app.add_typer(remote_app, name="remote")
