"""Bad input to compile/run/the rbln model: one clear line, exit status 2, nothing compiled or changed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import tree_snapshot
from lmhelpers import MODEL_DIRS, TASKS_DIR, cli_in_process, demo_bundle
from rbln_eval.errors import ConfigError, RblnEvalError
from rbln_eval.identity import BundleKey
from rbln_eval.lm import RBLNLM
from rbln_eval.store import BuildContext, Bundle, Store


def cli(*args: str) -> subprocess.CompletedProcess:
    """``rbln-eval ARGS`` in this process (on the simulator, activated by conftest): its exit status and output."""
    code, out, err = cli_in_process(*args)
    return subprocess.CompletedProcess(["rbln-eval", *args], code, out, err)


def one_line_exit_2(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert expected in errors[0], errors[0]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = str(tmp_path_factory.mktemp("errors-store"))
    demo_bundle(root, "causal", 1)
    return root


def rekeyed(store: Store, bundle: Bundle, **changes) -> Bundle:
    """A copy of ``bundle`` stored under a key with some fields changed (another target or toolchain)."""
    fields = bundle.key.fields()
    for name, value in changes.items():
        if isinstance(value, dict):
            fields[name] = {**fields[name], **value}
        else:
            fields[name] = value
    key = BundleKey.from_fields(fields)

    def copy(ctx: BuildContext) -> None:
        for name in bundle.manifest.files:
            if name != "rbln-eval-build.log":
                (ctx.path / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(bundle.path / name, ctx.path / name)

    return store.get_or_build(key, copy).bundle


def test_unknown_task(store_root: str) -> None:
    before = tree_snapshot(Path(store_root))
    digest = demo_bundle(store_root, "causal", 1).digest
    result = cli("run", "--artifact", digest, "--tasks", "demo_cloze,no_such_task", "--include_path", TASKS_DIR, "--store", store_root)
    one_line_exit_2(result, "unknown task(s): no_such_task")
    assert tree_snapshot(Path(store_root)) == before


def test_unknown_artifact(store_root: str) -> None:
    result = cli("run", "--artifact", "feedbeef", "--tasks", "demo_cloze", "--include_path", TASKS_DIR, "--store", store_root)
    one_line_exit_2(result, "no bundle matches 'feedbeef'")


def test_unsupported_architecture(tmp_path: Path, store_root: str) -> None:
    from transformers import BertConfig

    model = tmp_path / "bert"
    BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(model)
    before = tree_snapshot(Path(store_root))
    result = cli("compile", str(model), "--store", store_root)
    one_line_exit_2(result, "architecture bert (model_type 'bert') is not a model of a family that optimum-rbln compiles")
    assert "llama" in result.stderr and "t5" in result.stderr
    assert tree_snapshot(Path(store_root)) == before


def test_bad_model_args(store_root: str) -> None:
    digest = demo_bundle(store_root, "causal", 1).digest
    with pytest.raises(ConfigError, match="unknown model_args for rbln: colour"):
        RBLNLM(artifact=digest, store=store_root, colour="blue")
    with pytest.raises(ConfigError, match="rbln_batch_size='four' is not an integer"):
        RBLNLM(pretrained=str(MODEL_DIRS["causal"]), rbln_batch_size="four", store=store_root)
    with pytest.raises(ConfigError, match="either artifact= or pretrained="):
        RBLNLM(artifact=digest, pretrained="x", store=store_root)
    with pytest.raises(RblnEvalError, match="compile it with `rbln-eval compile` or pass export=True"):
        RBLNLM(pretrained=str(MODEL_DIRS["causal"]), rbln_max_seq_len=128, store=store_root)
    result = cli(
        "lm-eval", "run", "--model", "rbln", "--model_args", f"artifact={digest},store={store_root},colour=blue",
        "--tasks", "demo_cloze", "--include_path", TASKS_DIR, "--limit", "2",
    )
    one_line_exit_2(result, "unknown model_args for rbln: colour")


def test_bundle_for_another_target_or_toolchain(store_root: str) -> None:
    store = Store(store_root)
    original = demo_bundle(store_root, "causal", 1)
    other_target = rekeyed(store, original, target="SIM-RBLN-CA22")
    other_compiler = rekeyed(store, original, toolchain={"rebel-compiler": "0.11.0"})
    real_target = rekeyed(store, original, target="RBLN-CA25")
    before = tree_snapshot(Path(store_root))
    common = ["--tasks", "demo_cloze", "--include_path", TASKS_DIR, "--store", store_root, "--limit", "2"]
    one_line_exit_2(cli("run", "--artifact", other_target.digest, *common), "was compiled for RBLN-CA22, this device is RBLN-CA25")
    one_line_exit_2(
        cli("run", "--artifact", other_compiler.digest, *common),
        f"was compiled with rebel-compiler 0.11.0, installed is {original.key.toolchain['rebel-compiler']}",
    )
    one_line_exit_2(cli("run", "--artifact", real_target.digest, *common), "targets a real RBLN-CA25")
    assert tree_snapshot(Path(store_root)) == before


def test_bad_compile_options(store_root: str, tmp_path: Path) -> None:
    model = str(MODEL_DIRS["causal"])
    one_line_exit_2(cli("compile", model, "--logits", "some", "--store", store_root), "--logits must be one of all, last")
    one_line_exit_2(cli("compile", model, "--rbln-config", "{not json", "--store", store_root), "--rbln-config is not valid JSON")
    one_line_exit_2(cli("compile", model, "--rbln-config", "@/no/such/file.json", "--store", store_root), "cannot read --rbln-config file")
    one_line_exit_2(cli("compile", str(tmp_path / "missing"), "--store", store_root), "is neither a model directory nor a Hub model id")
    one_line_exit_2(cli("run", "--tasks", "demo_cloze", "--store", store_root), "pass exactly one of --artifact REF or --model MODEL")
