"""Building bundles: ``compile``, and the look-up-or-compile step that ``run --model`` shares with it."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import typer

from rbln_eval.api import Obtained, obtain_bundle
from rbln_eval.store import Store
from rbln_eval.cli.options import (
    DtypeOpt,
    LogitsOpt,
    MaxSeqLenOpt,
    NoRemoteOpt,
    NpuOpt,
    RblnConfigOpt,
    RemoteOpt,
    RevisionOpt,
    StoreOpt,
    TpOpt,
    TrustRemoteCodeOpt,
    config_summary,
    err,
    open_store,
    out,
)


def compile_options(
    batch_size: Optional[int], max_seq_len: Optional[int], tp: Optional[int], logits: str,
    dtype: Optional[str], rbln_config: Optional[str],
) -> Any:
    from rbln_eval.families.base import CompileOptions, parse_rbln_config

    return CompileOptions(
        batch_size=batch_size, max_seq_len=max_seq_len, tp=tp, logits=logits, dtype=dtype,
        extra=parse_rbln_config(rbln_config),
    )


def obtain_model(
    store: Store, model: str, options: Any, *, revision: Optional[str], npu: Optional[str],
    no_remote: bool, remote: Optional[str], force: bool = False, trust_remote_code: bool = False,
) -> Obtained:
    """Key ``model``, then reuse its bundle (store, then remotes) or compile it; say which on stderr."""

    @contextlib.contextmanager
    def compiling(request: Any) -> Iterator[None]:
        err.print(
            f"compiling {request.source.display} ({request.model_class}, {config_summary(request.compile_config, 80)}) "
            f"for {request.target} into {store.root}"
        )
        with err.status("compiling (the log is kept in the bundle)…", spinner="dots"):
            yield

    obtained = obtain_bundle(
        store, model=model, options=options, revision=revision, npu=npu,
        remotes=False if no_remote else (remote or True), force=force, trust_remote_code=trust_remote_code,
        notify=lambda message: err.print(message, markup=False), compiling=compiling,
    )
    short = obtained.bundle.digest[:12]
    if obtained.origin == "store":
        err.print(f"bundle {short} is already in {store.root}: nothing to compile")
    elif obtained.origin == "remote":
        err.print(f"pulled bundle {short} from remote {obtained.remote}: nothing to compile", markup=False)
    elif obtained.origin == "compiled":
        err.print(f"compiled in {obtained.bundle.manifest.build_seconds:.1f}s")
    else:
        err.print("another process compiled it meanwhile: reusing its bundle")
    return obtained


def compile_command(
    model: str = typer.Argument(..., help="Hub model id (org/name) or local model directory."),
    revision: RevisionOpt = None,
    tp: TpOpt = None,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Compiled batch size."),
    max_seq_len: MaxSeqLenOpt = None,
    logits: LogitsOpt = "all",
    npu: NpuOpt = None,
    dtype: DtypeOpt = None,
    rbln_config: RblnConfigOpt = None,
    store: StoreOpt = None,
    force: bool = typer.Option(False, "--force", help="Compile again even if the bundle exists."),
    trust_remote_code: TrustRemoteCodeOpt = False,
    no_remote: NoRemoteOpt = False,
    remote: RemoteOpt = None,
) -> None:
    """Compile a model once into a content-addressed bundle (a hit compiles nothing).

    Example: rbln-eval compile meta-llama/Llama-3.2-1B --tp 4 --max-seq-len 4096
    """
    st = open_store(store)
    options = compile_options(batch_size, max_seq_len, tp, logits, dtype, rbln_config)
    obtained = obtain_model(
        st, model, options, revision=revision, npu=npu, no_remote=no_remote, remote=remote, force=force,
        trust_remote_code=trust_remote_code,
    )
    out.print(f"{obtained.bundle.digest}  {obtained.bundle.path}")


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_command)
