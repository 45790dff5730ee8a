"""Keys and builders for store tests (no compiler involved)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rbln_eval.identity import BundleKey, ModelSource
from rbln_eval.store import BuildContext

TOOLCHAIN = {"rebel-compiler": "0.12.0", "optimum-rbln": "0.12.0", "torch": "2.13.0", "transformers": "5.15.1"}


def make_key(**overrides: Any) -> BundleKey:
    source = overrides.pop("source", ModelSource(kind="hub", id="org/tiny", revision="a" * 40))
    return BundleKey.build(
        source=source,
        model_class=overrides.pop("model_class", "causal"),
        compile_config=overrides.pop("compile_config", {"max_seq_len": 256, "tp": 1}),
        target=overrides.pop("target", "SIM-RBLN-CA25"),
        toolchain=overrides.pop("toolchain", TOOLCHAIN),
    )


def write_files(ctx: BuildContext, payload: bytes = b"weights") -> None:
    ctx.write_log("compiling")
    (ctx.path / "model.rbln").write_bytes(payload)
    (ctx.path / "config.json").write_text('{"model_type": "llama"}')
    (ctx.path / "sub").mkdir()
    (ctx.path / "sub" / "tokenizer.json").write_text("{}")


def counting_builder(counter: Path, payload: bytes = b"weights"):
    def build(ctx: BuildContext) -> None:
        with open(counter, "a") as fh:
            fh.write("x")
        write_files(ctx, payload)

    return build
