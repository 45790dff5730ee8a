"""Store commands: ls, show, verify, rm, gc, tag, explain."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.markup import escape

from rbln_eval.errors import RblnEvalError
from rbln_eval.identity import BundleKey, diff_keys
from rbln_eval.store import MANIFEST_NAME, Bundle, Manifest, Store
from rbln_eval.util.units import human_size
from rbln_eval.cli.options import StoreOpt, config_summary, err, open_store, out, short_json
from rbln_eval.cli.tables import Column, fitted_table, wrapping_table


def register(app: typer.Typer) -> None:
    """Add the store commands to ``app``."""
    for name, command in (
        ("ls", ls_command), ("show", show_command), ("verify", verify_command), ("rm", rm_command),
        ("gc", gc_command), ("tag", tag_command), ("explain", explain_command),
    ):
        app.command(name)(command)


#: ``ls`` columns; the model (with its revision), config, target and aliases tell two bundles apart.
LS_COLUMNS = (
    Column("digest", "id"), Column("model"), Column("config"), Column("target"), Column("size", "number"),
    Column("created", optional=True), Column("aliases"),
)


def _ls_cells(row: dict[str, Any]) -> list[str]:
    if "error" in row:
        return [row["digest"][:12], "[red]corrupt[/red]", "see `rbln-eval verify`", "", "", "", ""]
    revision = str(row["revision"] or "")[:7]
    return [
        row["digest"][:12],
        escape(str(row["model"]) + (f"@{revision}" if revision else "")),
        escape(config_summary(row["config"], None)),
        escape(row["target"]),
        human_size(row["size"]),
        row["created"].replace("+00:00", "").replace("T", " ")[:16],
        escape(", ".join(row["aliases"])),
    ]


def ls_command(
    store: StoreOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List stored bundles.

    Example: rbln-eval ls --store /shared/artifacts
    """
    st = open_store(store)
    aliases: dict[str, list[str]] = {}
    for alias, digest in st.refs().items():
        aliases.setdefault(digest, []).append(alias)
    rows: list[dict[str, Any]] = []
    for digest, item in st.bundles():
        if isinstance(item, RblnEvalError):
            rows.append({"digest": digest, "error": str(item)})
            continue
        m = item.manifest
        source = m.key.source
        rows.append(
            {
                "digest": m.digest,
                "model": m.info.get("model") or source.get("id") or "(local)",
                "revision": source.get("revision") or source.get("digest"),
                "config": m.key.compile,
                "target": m.key.target,
                "size": m.total_size,
                "created": m.created,
                "aliases": aliases.get(m.digest, []),
            }
        )
    if as_json:
        out.print_json(json.dumps(rows))
        return
    if not rows:
        out.print(f"no bundles in {st.root}")
        return
    table, shared = fitted_table(out, LS_COLUMNS, [_ls_cells(row) for row in rows])
    for header, value in shared:
        out.print(f"{header} (every bundle): {value}")
    out.print(table)
    failures = st.failures()
    if failures:
        err.print(f"{len(failures)} failed build(s) on record; `rbln-eval gc` clears them")


def show_command(
    ref: str = typer.Argument(..., help="Digest, digest prefix, alias or bundle directory."),
    store: StoreOpt = None,
) -> None:
    """Print a bundle's manifest (key, files, build time).

    Example: rbln-eval show 3f2a9c
    """
    bundle = open_store(store).resolve(ref)
    data = bundle.manifest.to_json()
    data["path"] = str(bundle.path)
    out.print_json(json.dumps(data))


def verify_command(
    refs: Optional[list[str]] = typer.Argument(None, help="Bundles to verify (default: all)."),
    store: StoreOpt = None,
) -> None:
    """Re-hash every file of bundles against their manifests; exit 1 and name the bad files on a mismatch.

    Example: rbln-eval verify 3f2a9c
    """
    st = open_store(store)
    bundles: list[Bundle] = []
    if refs:
        bundles = [st.resolve(ref) for ref in refs]
    else:
        for _digest, item in st.bundles():
            if isinstance(item, RblnEvalError):
                raise item
            bundles.append(item)
    bad = 0
    total = sum(b.manifest.total_size for b in bundles)
    with Progress(
        TextColumn("verify"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), console=err, transient=True,
        disable=not err.is_terminal,
    ) as progress:
        task = progress.add_task("verify", total=total)
        for bundle in bundles:
            problems = st.verify(bundle, on_bytes=lambda n: progress.advance(task, n))
            for problem in problems:
                err.print(f"{bundle.digest[:12]}: {problem.file}: {problem.reason}")
            if problems:
                bad += 1
            else:
                out.print(f"{bundle.digest[:12]} ok ({len(bundle.manifest.files)} files, {human_size(bundle.manifest.total_size)})")
    if bad:
        err.print(f"{bad} of {len(bundles)} bundle(s) failed verification; remove them with `rbln-eval rm` and rebuild")
        raise typer.Exit(1)


def rm_command(
    refs: list[str] = typer.Argument(..., help="Bundles to remove (digest, prefix, alias)."),
    store: StoreOpt = None,
) -> None:
    """Remove bundles and the aliases pointing to them.

    Example: rbln-eval rm 3f2a9c
    """
    st = open_store(store)
    bundles = [st.resolve(ref) for ref in refs]  # resolve all first: a bad ref removes nothing
    for bundle in bundles:
        aliases = st.remove(bundle)
        suffix = f" (aliases: {', '.join(aliases)})" if aliases else ""
        out.print(f"removed {bundle.digest[:12]}{suffix}")


def gc_command(
    store: StoreOpt = None,
    unreferenced: bool = typer.Option(False, "--unreferenced", help="Also remove bundles no alias points to."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed."),
) -> None:
    """Remove leftovers of killed builds, failure records, dangling aliases (and unaliased bundles).

    Example: rbln-eval gc --dry-run
    """
    items = open_store(store).gc(unreferenced=unreferenced, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in items:
        out.print(f"{verb} {item.kind}: {item.path}")
    out.print(f"{verb} {len(items)} item(s)")


def tag_command(
    ref: str = typer.Argument(..., help="Bundle to name (digest, prefix, alias)."),
    alias: str = typer.Argument(..., help="The alias, e.g. llama-3-8b@main:tp4."),
    store: StoreOpt = None,
) -> None:
    """Point an alias at a bundle.

    Example: rbln-eval tag 3f2a9c llama-3-8b@main:tp4
    """
    st = open_store(store)
    bundle = st.resolve(ref)
    st.set_ref(alias, bundle.digest)
    out.print(f"{alias} -> {bundle.digest[:12]}")


def _load_key(ref: str, st: Store) -> tuple[str, BundleKey]:
    """A key from a bundle reference, a bundle directory, a manifest file or a JSON file of key fields."""
    path = Path(ref).expanduser()
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RblnEvalError(f"{path} is not a JSON key or manifest file ({exc})") from None
        if isinstance(data, dict) and "files" in data and "key" in data:
            return str(path), Manifest.from_json(data, str(path)).key
        if isinstance(data, dict) and "key" in data:
            data = data["key"]
        if not isinstance(data, dict):
            raise RblnEvalError(f"{path} does not hold key fields")
        return str(path), BundleKey.from_fields(data)
    if path.is_dir() and not (path / MANIFEST_NAME).is_file():
        raise RblnEvalError(f"{path} is a directory without {MANIFEST_NAME}: not a bundle")
    bundle = st.resolve(ref)
    return bundle.digest[:12], bundle.key


def explain_command(
    ref: str = typer.Argument(..., help="Bundle (digest, prefix, alias, path) or key/manifest JSON file."),
    other: Optional[str] = typer.Argument(None, help="A second bundle or key to compare with."),
    store: StoreOpt = None,
) -> None:
    """Show what a bundle key is made of, field by field; with two keys, which fields differ.

    Example: rbln-eval explain 3f2a9c 8b01d4
    """
    st = open_store(store)
    name, key = _load_key(ref, st)
    if other is None:
        fields = key.fields()
        rows = [[name, digest[:12], escape(short_json(fields[name], None))] for name, digest in key.field_digests().items()]
        out.print(wrapping_table([Column("field"), Column("digest", "id"), Column("value")], rows, title=f"key {key.digest}"))
        return
    other_name, other_key = _load_key(other, st)
    if key.digest == other_key.digest:
        out.print(f"{name} and {other_name} have the same key {key.digest[:12]}")
        return
    rows = [[diff.field, escape(short_json(diff.left, None)), escape(short_json(diff.right, None))] for diff in diff_keys(key, other_key)]
    title = f"{name} ({key.digest[:12]}) vs {other_name} ({other_key.digest[:12]})"
    out.print(wrapping_table([Column("field"), Column(name), Column(other_name)], rows, title=title))
