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


def human_size(num: int) -> str:
    value = float(num)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{num} B"


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


def _compile_or_reuse(model: str, options, revision, npu, store: Store, force: bool, trust_remote_code: bool):
    """Key the model, then reuse its bundle or compile it with a spinner; prints what happened."""
    from .workflow import compile_bundle, plan_compile

    request = plan_compile(model, options, revision=revision, npu=npu, trust_remote_code=trust_remote_code)
    existing = None if force else store.lookup(request.key.digest)
    if existing is not None:
        err.print(f"bundle {request.key.digest[:12]} is already in {store.root}: nothing to compile")
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
) -> None:
    """Compile a model once into a content-addressed bundle (a hit compiles nothing).

    Example: rbln-eval compile meta-llama/Llama-3.2-1B --tp 4 --max-seq-len 4096
    """
    st = _store(store)
    options = _compile_options(batch_size, max_seq_len, tp, logits, dtype, rbln_config)
    bundle, _ = _compile_or_reuse(model, options, revision, npu, st, force, trust_remote_code)
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
    device: Optional[str] = typer.Option(None, "--device", help="NPU index or range (npu:0, 0-3)."),
    revision: Optional[str] = typer.Option(None, "--revision"),
    tp: Optional[int] = typer.Option(None, "--tp"),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len"),
    logits: str = typer.Option("all", "--logits"),
    npu: Optional[str] = typer.Option(None, "--npu"),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    rbln_config: Optional[str] = typer.Option(None, "--rbln-config"),
    store: Optional[Path] = StoreOption,
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code"),
    show_config: bool = typer.Option(False, "--show_config", "--show-config", help="Print the full results JSON."),
) -> None:
    """Evaluate a bundle with lm-evaluation-harness (compiling it first with --model on a miss).

    Example: rbln-eval run --artifact 3f2a9c --tasks lambada_openai --limit 100 --output_path results/
    """
    from .evaluation import EvalOptions, evaluate, parse_seed, summary_json, task_manager_for
    from .lm import RBLNLM, _parse_device
    from .loader import load_bundle

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
        bundle, compiled_now = _compile_or_reuse(model, opts, revision, npu, st, False, trust_remote_code)
    with err.status(f"loading bundle {bundle.digest[:12]}…", spinner="dots"):
        loaded = load_bundle(bundle, device=device_index)
    err.print(f"loaded {bundle.digest[:12]} ({bundle.key.target}) in {loaded.load_seconds:.1f}s")
    lm = RBLNLM(loaded=loaded)
    lm.compiled_now = compiled_now
    results = evaluate(lm, options, task_manager=manager)
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
