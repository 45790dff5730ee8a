"""What the command modules share: the consoles, option types, store opening and small formatters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from rbln_eval.util.constants import STORE_ENV
from rbln_eval.store import Store
from rbln_eval.cli.help_format import plain_typer

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def typer_app(help: str) -> typer.Typer:
    """A command group with the project's settings (plain help, whole option names at any width)."""
    return plain_typer(help)


StoreOpt = Annotated[
    Optional[Path],
    typer.Option("--store", envvar=STORE_ENV, help="Bundle store directory (default: ./artifacts).", show_default=False),
]
RefArg = Annotated[str, typer.Argument(help="Bundle: digest, digest prefix, alias or bundle directory.")]
RemoteOpt = Annotated[Optional[str], typer.Option("--remote", help="Look only on this configured remote.")]
NoRemoteOpt = Annotated[bool, typer.Option("--no-remote", help="Do not look for the bundle on remotes.")]
TasksOpt = Annotated[str, typer.Option("--tasks", help="Comma-separated lm_eval task names.")]
LimitOpt = Annotated[Optional[float], typer.Option("--limit", help="Documents per task (or a fraction).")]
FewshotOpt = Annotated[Optional[int], typer.Option("--num_fewshot", "--num-fewshot", help="Few-shot examples per task.")]
IncludePathOpt = Annotated[Optional[str], typer.Option("--include_path", "--include-path", help="Directory of extra task YAMLs.")]
GenKwargsOpt = Annotated[Optional[str], typer.Option("--gen_kwargs", "--gen-kwargs", help="Generation settings, e.g. max_gen_toks=64.")]
SeedOpt = Annotated[Optional[str], typer.Option("--seed", help="One seed, or four (python, numpy, torch, fewshot).")]

# Compile options: `compile` and `run --model` take the same ones.
RevisionOpt = Annotated[Optional[str], typer.Option("--revision", help="Hub branch, tag or commit.")]
TpOpt = Annotated[Optional[int], typer.Option("--tp", help="Tensor parallelism: NPUs per replica.")]
MaxSeqLenOpt = Annotated[Optional[int], typer.Option("--max-seq-len", help="Compiled sequence length (default: the model's).")]
LogitsOpt = Annotated[
    str,
    typer.Option("--logits", help="Causal LMs: 'all' keeps every position's logits (one prefill per request), 'last' only the last."),
]
NpuOpt = Annotated[Optional[str], typer.Option("--npu", help="Target NPU, e.g. RBLN-CA25 (default: the installed device).")]
DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", help="Compute dtype, e.g. float32.")]
RblnConfigOpt = Annotated[Optional[str], typer.Option("--rbln-config", help="Other optimum-rbln compile options: JSON or @file.json.")]
TrustRemoteCodeOpt = Annotated[bool, typer.Option("--trust-remote-code", help="Allow the model's own code (off by default).")]
DeviceOpt = Annotated[
    Optional[str], typer.Option("--device", help="NPU index or range of one replica (npu:0, 0-3; default: the first free NPUs).")
]


def open_store(path: Optional[Path]) -> Store:
    """The store at ``path`` (default ./artifacts or $RBLN_EVAL_STORE), checked to be usable."""
    store = Store(path)
    store.check_path()
    return store


def split_tasks(tasks: str) -> list[str]:
    return [t.strip() for t in tasks.split(",") if t.strip()]


def config_summary(config: dict[str, Any], width: Optional[int] = 48) -> str:
    """``key=value`` settings, scalar ones first; cut to ``width`` characters unless ``width`` is None."""
    # nested settings (a submodule's, a family's key-only records) after the scalar ones
    config = dict(sorted(config.items(), key=lambda kv: isinstance(kv[1], dict)))
    text = " ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in config.items())
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def short_json(value: Any, width: Optional[int] = 60) -> str:
    """``value`` as JSON (a string as itself), cut to ``width`` characters unless ``width`` is None."""
    try:
        text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    except TypeError:  # a marker such as an absent field
        text = repr(value)
    return text if width is None or len(text) <= width else text[: width - 1] + "…"

# `run`: the settings it adds to lm_eval's (whose own options are lm_eval's parser's, see `run --help`).
CompileBatchOpt = Annotated[
    Optional[str],
    typer.Option(
        "--batch_size", "--batch-size", "-b",
        help="Compiled batch size (an integer): compiles with --model; with --artifact it must be the bundle's.",
    ),
]
BootstrapItersOpt = Annotated[
    Optional[int],
    typer.Option(
        "--bootstrap_iters", "--bootstrap-iters",
        help="Bootstrap resamples for the metrics' standard errors (lm_eval's simple_evaluate; default 100000, 0 skips).",
    ),
]
RunTrustRemoteCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-remote-code", "--trust_remote_code",
        help="Allow the model's own code and the datasets' (as lm_eval's --trust_remote_code); off by default.",
    ),
]
