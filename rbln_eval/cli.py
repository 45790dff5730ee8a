"""The ``rbln-eval`` command line: parse, call the library, print.

Errors the user can fix (:class:`~rbln_eval.errors.RblnEvalError`) are printed as one line on stderr and
exit with status 2; nothing in the store is changed by a command that fails that way.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from . import __version__
from .errors import RblnEvalError
from .identity import BundleKey, diff_keys
from .store import MANIFEST_NAME, STORE_ENV, Bundle, Manifest, Store
from .units import human_size

app = typer.Typer(
    name="rbln-eval",
    help=(
        "Compile language models for Rebellions NPUs once into content-addressed bundles, "
        "and evaluate them with lm-evaluation-harness.\n\n"
        "Example: rbln-eval ls --store artifacts"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

StoreOption = typer.Option(
    None, "--store", envvar=STORE_ENV, help="Bundle store directory (default: ./artifacts).", show_default=False
)


def _store(path: Optional[Path]) -> Store:
    store = Store(path)
    store.check_path()
    return store


def config_summary(config: dict[str, Any], width: int = 48) -> str:
    text = " ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in config.items())
    return text if len(text) <= width else text[: width - 1] + "…"


@app.callback(invoke_without_command=True)
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    if version:
        out.print(f"rbln-eval {__version__}")
        raise typer.Exit()


# --------------------------------------------------------------------------------------------------
# Store commands
# --------------------------------------------------------------------------------------------------


@app.command("ls")
def ls_command(
    store: Optional[Path] = StoreOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List stored bundles.

    Example: rbln-eval ls --store /shared/artifacts
    """
    st = _store(store)
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
    table = Table(box=None, pad_edge=False)
    for column in ("digest", "model", "revision", "config", "target", "size", "created"):
        table.add_column(column, no_wrap=column != "config")
    for row in rows:
        if "error" in row:
            table.add_row(row["digest"][:12], "[red]corrupt[/red]", "", "see `rbln-eval verify`", "", "", "")
            continue
        table.add_row(
            row["digest"][:12],
            str(row["model"]),
            str(row["revision"] or "")[:12],
            config_summary(row["config"]),
            row["target"],
            human_size(row["size"]),
            row["created"].replace("+00:00", "Z"),
        )
    out.print(table)
    failures = st.failures()
    if failures:
        err.print(f"{len(failures)} failed build(s) on record; `rbln-eval gc` clears them")


@app.command("show")
def show_command(
    ref: str = typer.Argument(..., help="Digest, digest prefix, alias or bundle directory."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Print a bundle's manifest (key, files, build time).

    Example: rbln-eval show 3f2a9c
    """
    bundle = _store(store).resolve(ref)
    data = bundle.manifest.to_json()
    data["path"] = str(bundle.path)
    out.print_json(json.dumps(data))


@app.command("verify")
def verify_command(
    refs: Optional[list[str]] = typer.Argument(None, help="Bundles to verify (default: all)."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Re-hash every file of bundles against their manifests; exit 1 and name the bad files on a mismatch.

    Example: rbln-eval verify 3f2a9c
    """
    st = _store(store)
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


@app.command("rm")
def rm_command(
    refs: list[str] = typer.Argument(..., help="Bundles to remove (digest, prefix, alias)."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Remove bundles and the aliases pointing to them.

    Example: rbln-eval rm 3f2a9c
    """
    st = _store(store)
    bundles = [st.resolve(ref) for ref in refs]  # resolve all first: a bad ref removes nothing
    for bundle in bundles:
        aliases = st.remove(bundle)
        suffix = f" (aliases: {', '.join(aliases)})" if aliases else ""
        out.print(f"removed {bundle.digest[:12]}{suffix}")


@app.command("gc")
def gc_command(
    store: Optional[Path] = StoreOption,
    unreferenced: bool = typer.Option(False, "--unreferenced", help="Also remove bundles no alias points to."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be removed."),
) -> None:
    """Remove leftovers of killed builds, failure records, dangling aliases (and unaliased bundles).

    Example: rbln-eval gc --dry-run
    """
    items = _store(store).gc(unreferenced=unreferenced, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for item in items:
        out.print(f"{verb} {item.kind}: {item.path}")
    out.print(f"{verb} {len(items)} item(s)")


@app.command("tag")
def tag_command(
    ref: str = typer.Argument(..., help="Bundle to name (digest, prefix, alias)."),
    alias: str = typer.Argument(..., help="The alias, e.g. llama-3-8b@main:tp4."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Point an alias at a bundle.

    Example: rbln-eval tag 3f2a9c llama-3-8b@main:tp4
    """
    st = _store(store)
    bundle = st.resolve(ref)
    st.set_ref(alias, bundle.digest)
    out.print(f"{alias} -> {bundle.digest[:12]}")


# --------------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------------


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


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= width else text[: width - 1] + "…"


@app.command("explain")
def explain_command(
    ref: str = typer.Argument(..., help="Bundle (digest, prefix, alias, path) or key/manifest JSON file."),
    other: Optional[str] = typer.Argument(None, help="A second bundle or key to compare with."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Show what a bundle key is made of, field by field; with two keys, which fields differ.

    Example: rbln-eval explain 3f2a9c 8b01d4
    """
    st = _store(store)
    name, key = _load_key(ref, st)
    if other is None:
        table = Table(box=None, pad_edge=False, title=f"key {key.digest}")
        table.add_column("field")
        table.add_column("digest")
        table.add_column("value", overflow="fold")
        fields = key.fields()
        for field_name, digest in key.field_digests().items():
            table.add_row(field_name, digest[:12], _short(fields[field_name], 200))
        out.print(table)
        return
    other_name, other_key = _load_key(other, st)
    if key.digest == other_key.digest:
        out.print(f"{name} and {other_name} have the same key {key.digest[:12]}")
        return
    table = Table(box=None, pad_edge=False, title=f"{name} ({key.digest[:12]}) vs {other_name} ({other_key.digest[:12]})")
    table.add_column("field")
    table.add_column(name, overflow="fold")
    table.add_column(other_name, overflow="fold")
    for diff in diff_keys(key, other_key):
        table.add_row(diff.field, _short(diff.left), _short(diff.right))
    out.print(table)


# --------------------------------------------------------------------------------------------------
# compile / run
# --------------------------------------------------------------------------------------------------


def _compile_options(
    batch_size: Optional[int], max_seq_len: Optional[int], tp: Optional[int], logits: str,
    dtype: Optional[str], rbln_config: Optional[str],
):
    from .compiler import CompileOptions, parse_rbln_config

    return CompileOptions(
        batch_size=batch_size, max_seq_len=max_seq_len, tp=tp, logits=logits, dtype=dtype,
        extra=parse_rbln_config(rbln_config),
    )


def _remotes_for(store: Store, no_remote: bool, remote: Optional[str]) -> list:
    """The remotes a lookup asks: none with --no-remote, just --remote NAME, else all configured ones."""
    if no_remote:
        return []
    from .remotes import configured_remotes

    return configured_remotes(store, only=remote)


def _compile_or_reuse(
    model: str, options, revision, npu, store: Store, force: bool, trust_remote_code: bool, remotes: Optional[list] = None,
):
    """Key the model, then reuse its bundle (local store, then remotes) or compile it; prints what happened."""
    from .workflow import compile_bundle, find_or_pull, plan_compile

    request = plan_compile(model, options, revision=revision, npu=npu, trust_remote_code=trust_remote_code)
    found = None if force else find_or_pull(request, store, remotes or [], notify=lambda message: err.print(message, markup=False))
    if found is not None:
        existing, served_by = found
        if served_by is None:
            err.print(f"bundle {request.key.digest[:12]} is already in {store.root}: nothing to compile")
        else:
            err.print(f"pulled bundle {request.key.digest[:12]} from remote {served_by}: nothing to compile", markup=False)
        return existing, False
    err.print(
        f"compiling {request.source.display} ({request.model_class}, {config_summary(request.compile_config, 80)}) "
        f"for {request.target} into {store.root}"
    )
    with err.status("compiling (the log is kept in the bundle)…", spinner="dots"):
        result = compile_bundle(
            request, store, force=force, trust_remote_code=trust_remote_code,
            on_wait=lambda message: err.print(message),
        )
    if result.built:
        err.print(f"compiled in {result.bundle.manifest.build_seconds:.1f}s")
    else:
        err.print("another process compiled it meanwhile: reusing its bundle")
    return result.bundle, result.built


@app.command("compile")
def compile_command(
    model: str = typer.Argument(..., help="Hub model id (org/name) or local model directory."),
    revision: Optional[str] = typer.Option(None, "--revision", help="Hub branch, tag or commit."),
    tp: Optional[int] = typer.Option(None, "--tp", help="Tensor parallelism: NPUs per replica."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Compiled batch size."),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="Compiled sequence length (default: the model's)."),
    logits: str = typer.Option("all", "--logits", help="Causal LMs: 'all' keeps every position's logits (one prefill per request), 'last' only the last."),
    npu: Optional[str] = typer.Option(None, "--npu", help="Target NPU, e.g. RBLN-CA25 (default: the installed device)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="Compute dtype, e.g. float32."),
    rbln_config: Optional[str] = typer.Option(None, "--rbln-config", help="Other optimum-rbln compile options: JSON or @file.json."),
    store: Optional[Path] = StoreOption,
    force: bool = typer.Option(False, "--force", help="Compile again even if the bundle exists."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own code (off by default)."),
    no_remote: bool = typer.Option(False, "--no-remote", help="Do not look for the bundle on remotes."),
    remote: Optional[str] = typer.Option(None, "--remote", help="Look only on this configured remote."),
) -> None:
    """Compile a model once into a content-addressed bundle (a hit compiles nothing).

    Example: rbln-eval compile meta-llama/Llama-3.2-1B --tp 4 --max-seq-len 4096
    """
    st = _store(store)
    options = _compile_options(batch_size, max_seq_len, tp, logits, dtype, rbln_config)
    remotes = _remotes_for(st, no_remote, remote)
    bundle, _ = _compile_or_reuse(model, options, revision, npu, st, force, trust_remote_code, remotes)
    out.print(f"{bundle.digest}  {bundle.path}")


def _split_tasks(tasks: str) -> list[str]:
    return [t.strip() for t in tasks.split(",") if t.strip()]


@app.command("run")
def run_command(
    artifact: Optional[str] = typer.Option(None, "--artifact", help="Bundle: digest, prefix, alias or path."),
    model: Optional[str] = typer.Option(None, "--model", help="Model to compile on a miss (with the compile options)."),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated lm_eval task names."),
    num_fewshot: Optional[int] = typer.Option(None, "--num_fewshot", "--num-fewshot"),
    limit: Optional[float] = typer.Option(None, "--limit", help="Documents per task (or a fraction)."),
    batch_size: Optional[str] = typer.Option(None, "--batch_size", "--batch-size", help="Compiled batch size when compiling with --model."),
    output_path: Optional[str] = typer.Option(None, "--output_path", "--output-path", "-o"),
    log_samples: bool = typer.Option(False, "--log_samples", "--log-samples", "-s"),
    include_path: Optional[str] = typer.Option(None, "--include_path", "--include-path"),
    gen_kwargs: Optional[str] = typer.Option(None, "--gen_kwargs", "--gen-kwargs"),
    apply_chat_template: bool = typer.Option(False, "--apply_chat_template", "--apply-chat-template"),
    fewshot_as_multiturn: bool = typer.Option(False, "--fewshot_as_multiturn", "--fewshot-as-multiturn"),
    seed: Optional[str] = typer.Option(None, "--seed"),
    use_cache: Optional[str] = typer.Option(None, "--use_cache", "--use-cache", help="Request cache path prefix (per bundle)."),
    device: Optional[str] = typer.Option(None, "--device", help="NPU index or range of one replica (npu:0, 0-3; default: the first free NPUs)."),
    devices: Optional[str] = typer.Option(None, "--devices", help="NPUs to use, split into replicas of the bundle's tp (0-7)."),
    data_parallel: Optional[int] = typer.Option(None, "--data-parallel", help="Replicas, each in its own process on its own NPUs."),
    revision: Optional[str] = typer.Option(None, "--revision"),
    tp: Optional[int] = typer.Option(None, "--tp"),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len"),
    logits: str = typer.Option("all", "--logits"),
    npu: Optional[str] = typer.Option(None, "--npu"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    rbln_config: Optional[str] = typer.Option(None, "--rbln-config"),
    store: Optional[Path] = StoreOption,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    no_remote: bool = typer.Option(False, "--no-remote", help="Do not look for the bundle on remotes."),
    remote: Optional[str] = typer.Option(None, "--remote", help="Look only on this configured remote."),
    show_config: bool = typer.Option(False, "--show_config", "--show-config", help="Print the full results JSON."),
) -> None:
    """Evaluate a bundle with lm-evaluation-harness (compiling it first with --model on a miss).

    Example: rbln-eval run --artifact 3f2a9c --tasks lambada_openai --limit 100 --output_path results/
    """
    from .evaluation import EvalOptions, evaluate, parse_seed, summary_json, task_manager_for
    from .lm import _parse_device

    if bool(artifact) == bool(model):
        raise RblnEvalError("pass exactly one of --artifact REF or --model MODEL")
    task_list = _split_tasks(tasks)
    options = EvalOptions(
        tasks=task_list, num_fewshot=num_fewshot, limit=limit, output_path=output_path, log_samples=log_samples,
        include_path=include_path, gen_kwargs=gen_kwargs, apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=fewshot_as_multiturn or None, seed=parse_seed(seed), use_cache=use_cache,
    )
    manager = task_manager_for(task_list, include_path)  # fail on unknown tasks before loading anything
    device_index = _parse_device(device)
    st = _store(store)
    compiled_now = False
    if artifact:
        bundle = st.resolve(artifact)
    else:
        compile_batch = None
        if batch_size is not None:
            try:
                compile_batch = int(batch_size)
            except ValueError:
                raise RblnEvalError(f"--batch_size {batch_size!r} must be an integer (the compiled batch size)") from None
        opts = _compile_options(compile_batch, max_seq_len, tp, logits, dtype, rbln_config)
        remotes = _remotes_for(st, no_remote, remote)
        bundle, compiled_now = _compile_or_reuse(model, opts, revision, npu, st, False, trust_remote_code, remotes)
    lm = _replicas(bundle, device_index, devices, data_parallel)
    lm.compiled_now = compiled_now
    try:
        results = evaluate(lm, options, task_manager=manager)
    finally:
        close = getattr(lm, "close", None)
        if close is not None:
            close()
    if results is None:
        return
    from lm_eval.utils import make_table

    if show_config:
        out.print(summary_json({k: v for k, v in results.items() if k != "samples"}), markup=False)
    info = results["config"]["rbln"]
    out.print(
        f"rbln ({bundle.digest[:12]}, {bundle.key.target}), limit: {limit}, num_fewshot: {num_fewshot}, "
        f"batch_size: {info['batch_size']}",
        markup=False,
    )
    out.print(make_table(results), markup=False)
    if "groups" in results:
        out.print(make_table(results, "groups"), markup=False)
    counters = ", ".join(f"{g}: {c['calls']} calls / {c['tokens']} tokens" for g, c in info["device_counters"].items())
    err.print(
        f"load {info['load_seconds']:.1f}s, eval {info['eval_seconds']:.1f}s, "
        f"{info['requests']} requests ({info['requests_per_second'] or 0:.1f}/s); device: {counters}"
    )
    for index, worker in enumerate(info.get("workers") or []):
        from .devices import format_devices

        err.print(
            f"replica {index} on {format_devices(worker['devices'])}: {worker['requests']} requests, "
            f"busy {worker['busy_seconds']:.1f}s"
        )


def _replicas(bundle: Bundle, device_index: Any, devices: Optional[str], data_parallel: Optional[int]):
    """One in-process replica, or K worker processes (``--data-parallel`` / ``--devices``)."""
    from .devices import format_devices, plan_replicas
    from .lm import RBLNLM
    from .loader import load_bundle

    tp = int(bundle.key.compile.get("num_devices") or 1)
    if device_index is not None:
        if devices or (data_parallel or 1) > 1:
            raise RblnEvalError("--device places one replica: use --devices (or --data-parallel) for several")
        groups: Optional[list[list[int]]] = [device_index if isinstance(device_index, list) else [device_index]]
    else:
        groups = plan_replicas(tp, devices, data_parallel)
    if groups is not None and len(groups) > 1:
        from .parallel import DataParallelRBLNLM

        placed = ", ".join(format_devices(group) for group in groups)
        with err.status(f"starting {len(groups)} replicas of {bundle.digest[:12]} on {placed}…", spinner="dots"):
            lm = DataParallelRBLNLM(bundle, groups)
        err.print(f"loaded {len(groups)} replicas of {bundle.digest[:12]} ({bundle.key.target}) on {placed} in {lm.load_seconds:.1f}s")
        return lm
    placement = None if groups is None else (groups[0][0] if len(groups[0]) == 1 else groups[0])
    with err.status(f"loading bundle {bundle.digest[:12]}…", spinner="dots"):
        loaded = load_bundle(bundle, device=placement)
    where = "" if groups is None else f" on {format_devices(groups[0])}"
    err.print(f"loaded {bundle.digest[:12]} ({bundle.key.target}){where} in {loaded.load_seconds:.1f}s")
    return RBLNLM(loaded=loaded)


app.command("eval", help="Alias of `run`.\n\nExample: rbln-eval eval --artifact 3f2a9c --tasks hellaswag")(run_command)


@app.command(
    "lm-eval",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def lm_eval_command(ctx: typer.Context) -> None:
    """Run lm_eval's own CLI with the `rbln` model registered (all arguments are lm_eval's).

    Example: rbln-eval lm-eval run --model rbln --model_args artifact=3f2a9c --tasks lambada_openai
    """
    import lm_eval.__main__ as lm_eval_main

    from . import lm as _registers_rbln  # noqa: F401

    sys.argv = ["lm_eval", *ctx.args]
    lm_eval_main.cli_evaluate()


# --------------------------------------------------------------------------------------------------
# Sharing: push, pull, remotes
# --------------------------------------------------------------------------------------------------

remote_app = typer.Typer(
    help="Configure where bundles are shared: HF Hub repos and directories.\n\nExample: rbln-eval remote add team hf://my-org/compiled",
    no_args_is_help=True,
)
app.add_typer(remote_app, name="remote")


def _push_target(st: Store, repo: Optional[str], remote: Optional[str], private: bool):
    from .remotes import RemoteConfigError, configured_remotes, get_spec, open_remote
    from .remotes.config import check_repo_id
    from .remotes.hub import HubRemote

    if repo and remote:
        raise RemoteConfigError("pass either --repo ORG/NAME or --remote NAME, not both")
    if repo:
        return HubRemote(f"hf://{repo}", check_repo_id(repo), private=private)
    if remote:
        return open_remote(get_spec(st, remote))
    remotes = configured_remotes(st)
    if len(remotes) != 1:
        raise RemoteConfigError(
            f"{len(remotes)} remotes are configured: pass --repo ORG/NAME or --remote NAME"
        )
    return remotes[0]


@app.command("push")
def push_command(
    ref: str = typer.Argument(..., help="Bundle to share: digest, prefix, alias or path."),
    repo: Optional[str] = typer.Option(None, "--repo", help="HF Hub model repo ORG/NAME (created if missing)."),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo private."),
    remote: Optional[str] = typer.Option(None, "--remote", help="A configured remote instead of --repo."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Share a bundle on an HF Hub repo or a directory remote (verified first; immutable per digest).

    Example: rbln-eval push 3f2a9c --repo my-org/compiled --private
    """
    import time

    st = _store(store)
    bundle = st.resolve(ref)
    target = _push_target(st, repo, remote, private)
    problems = st.verify(bundle)
    if problems:
        raise RblnEvalError(
            f"bundle {bundle.digest[:12]} fails verification ({problems[0].file}: {problems[0].reason}): "
            "remove it with `rbln-eval rm` and rebuild; nothing was pushed"
        )
    started = time.monotonic()
    pushed, uploaded = target.push(bundle)
    elapsed = time.monotonic() - started
    if uploaded:
        err.print(f"pushed {bundle.digest[:12]} ({human_size(bundle.manifest.total_size)}) in {elapsed:.1f}s", markup=False)
    else:
        err.print(f"{bundle.digest[:12]} is already on {target.location}: nothing uploaded", markup=False)
    out.print(f"{bundle.digest}  {pushed.location}", markup=False)
    if target.kind == "hf":
        cls = "RBLNAutoModelForSeq2SeqLM" if bundle.key.model_class == "seq2seq" else "RBLNAutoModelForCausalLM"
        err.print(f'load it with: {cls}.from_pretrained("{target.repo}", revision="{pushed.revision}", export=False)', markup=False)


@app.command("pull")
def pull_command(
    ref: str = typer.Argument(..., help="Digest, prefix or alias on a remote, or hf://ORG/NAME@REV."),
    remote: Optional[str] = typer.Option(None, "--remote", help="Look only on this configured remote."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Download a bundle from a remote, verify every file against its manifest, and add it to the store.

    Example: rbln-eval pull hf://my-org/compiled@bundle-3f2a9c...
    """
    import time

    from .remotes import configured_remotes
    from .remotes.pull import pull_ref

    st = _store(store)
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


@remote_app.command("add")
def remote_add_command(
    name: str = typer.Argument(..., help="A short name, e.g. team."),
    location: str = typer.Argument(..., help="hf://ORG/NAME for a Hub repo, or a directory path."),
    private: bool = typer.Option(False, "--private", help="Hub repos: create the repo private on first push."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Add a remote; `compile` and `run --model` look there before compiling.

    Example: rbln-eval remote add nfs /shared/rbln-bundles
    """
    from .remotes import add_spec, spec_from_location

    st = _store(store)
    spec = spec_from_location(name, location, private=private)
    add_spec(st, spec)
    out.print(f"added remote {spec.name}: {spec.location}", markup=False)


@remote_app.command("ls")
def remote_ls_command(
    store: Optional[Path] = StoreOption,
    bundles: bool = typer.Option(False, "--bundles", help="Also list each remote's bundles (reads its index)."),
) -> None:
    """List the configured remotes (in lookup order).

    Example: rbln-eval remote ls --bundles
    """
    from .remotes import load_specs, open_remote

    st = _store(store)
    specs = load_specs(st)
    if not specs:
        out.print(f"no remotes configured in {st.root}: add one with `rbln-eval remote add`", markup=False)
        return
    for spec in specs:
        out.print(f"{spec.name}\t{spec.kind}\t{spec.location}" + ("\tprivate" if spec.private else ""), markup=False)
        if bundles:
            index = open_remote(spec).read_index()  # type: ignore[attr-defined]
            for digest, entry in sorted(index["bundles"].items()):
                out.print(
                    f"  {digest[:12]}  {entry.get('model') or ''}  {config_summary(entry.get('key', {}).get('compile', {}))}  "
                    f"{entry.get('key', {}).get('target', '')}  {human_size(int(entry.get('size') or 0))}",
                    markup=False,
                )


@remote_app.command("rm")
def remote_rm_command(
    name: str = typer.Argument(..., help="The remote to forget (nothing on it is deleted)."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Forget a remote (its bundles stay where they are).

    Example: rbln-eval remote rm nfs
    """
    from .remotes import remove_spec

    spec = remove_spec(_store(store), name)
    out.print(f"removed remote {spec.name} ({spec.location})", markup=False)


# --------------------------------------------------------------------------------------------------
# Devices and parity
# --------------------------------------------------------------------------------------------------


@app.command("doctor")
def doctor_command(
    store: Optional[Path] = StoreOption,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """Check this machine: toolchain, NPUs (rebel, rbln-stat), CUDA, the store, remotes, Hub token.

    Example: rbln-eval doctor
    """
    from .doctor import collect, render

    data = collect(Store(store))
    if as_json:
        out.print_json(json.dumps(data))
    else:
        render(data, out)


@app.command("compare")
def compare_command(
    ref: str = typer.Argument(..., help="Bundle: digest, prefix, alias or path."),
    tasks: str = typer.Option(..., "--tasks", help="Comma-separated lm_eval task names."),
    limit: Optional[float] = typer.Option(None, "--limit", help="Documents per task (or a fraction)."),
    num_fewshot: Optional[int] = typer.Option(None, "--num_fewshot", "--num-fewshot"),
    include_path: Optional[str] = typer.Option(None, "--include_path", "--include-path"),
    gen_kwargs: Optional[str] = typer.Option(None, "--gen_kwargs", "--gen-kwargs"),
    seed: Optional[str] = typer.Option(None, "--seed"),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", help="Exit 1 when a |Δ| exceeds this (relative above 1)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="JSON report path (default: compare-DIGEST.json)."),
    device: Optional[str] = typer.Option(None, "--device", help="NPU index or range of the bundle's replica."),
    batch_size: int = typer.Option(8, "--batch-size", help="Batch size of the HF reference."),
    store: Optional[Path] = StoreOption,
) -> None:
    """Score a bundle and its model's HF reference on the same samples; report per-task and per-request deltas.

    Example: rbln-eval compare 3f2a9c --tasks hellaswag,arc_easy --limit 200 --tolerance 1e-4
    """
    from .compare import reference_lm, run_compare
    from .evaluation import EvalOptions, parse_seed, task_manager_for
    from .lm import _parse_device

    if tolerance is not None and not tolerance >= 0:
        raise RblnEvalError(f"--tolerance must be a non-negative number, got {tolerance}")
    options = EvalOptions(
        tasks=_split_tasks(tasks), num_fewshot=num_fewshot, limit=limit, include_path=include_path,
        gen_kwargs=gen_kwargs, seed=parse_seed(seed), log_samples=True,
    )
    task_manager_for(options.tasks, include_path)  # fail on unknown tasks before loading anything
    bundle = _store(store).resolve(ref)
    lm = _replicas(bundle, _parse_device(device), None, None)
    with err.status("loading the HF reference…", spinner="dots"):
        reference = reference_lm(bundle, max_length=lm.max_length, batch_size=batch_size)
    report = run_compare(lm, options, tolerance, reference=reference)
    _print_comparison(report)
    path = report.write(output or Path(f"compare-{bundle.digest[:12]}.json"))
    err.print(f"report written to {path}", markup=False)
    if not report.passed:
        details = "; ".join(f"{task.task} ({', '.join(task.failures)})" for task in report.failing)
        err.print(f"tolerance {tolerance:g} exceeded in {len(report.failing)} task(s): {details}", markup=False)
        raise typer.Exit(1)


def _fmt(value: Optional[float], spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _print_comparison(report) -> None:
    out.print(
        f"rbln {report.bundle[:12]} ({report.target}) vs hf {report.reference['pretrained']} "
        f"({report.reference['dtype']}, {report.reference['device']}), limit: {report.limit}",
        markup=False,
    )
    table = Table(box=None, pad_edge=False)
    for column in ("task", "metric", "rbln", "hf", "Δ", "max |Δ lp|", "mean |Δ lp|", "argmax agree", "gen agree", ""):
        table.add_column(column, no_wrap=True)
    for task in report.tasks:
        status = "" if report.tolerance is None else ("ok" if task.passed else "[red]FAIL[/red]")
        first = True
        for metric in task.metrics or [None]:
            table.add_row(
                task.task if first else "",
                metric.metric.replace(",none", "") if metric else "-",
                _fmt(metric.rbln, ".6g") if metric else "-",
                _fmt(metric.reference, ".6g") if metric else "-",
                _fmt(metric.delta, "+.2e") if metric else "-",
                _fmt(task.max_abs_logprob_delta, ".2e") if first else "",
                _fmt(task.mean_abs_logprob_delta, ".2e") if first else "",
                _fmt(task.argmax_agreement, ".1%") if first else "",
                _fmt(task.generation_agreement, ".1%") if first else "",
                status if first else "",
            )
            first = False
    out.print(table, width=max(out.width, 160))


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> None:
    """Console-script entry point: user errors become one line on stderr and exit status 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, prog_name="rbln-eval")
    except RblnEvalError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(exc.exit_code)
