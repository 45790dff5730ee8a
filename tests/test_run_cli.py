"""`rbln-eval run` takes lm_eval's whole `run` command line: its options reach lm_eval as `lm-eval run` passes
them, chat templates give the prompts of lm_eval's `hf` model, results are named after the model, and bad
options are refused in one line (exit 2) before anything is loaded."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lmhelpers import MODEL_DIRS, TASKS_DIR, cli_in_process, shared_bundle
from rbln_eval.api import CompileOptions
from rbln_eval.build.workflow import compile_bundle, plan_compile
from rbln_eval.store import Store

SYSTEM = "Answer briefly."
TEMPLATES = {
    "default": (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    ),
    "terse": "{% for m in messages %}{{ m['content'] }} | {% endfor %}",
}
SCORES = ("acc", "acc_norm", "exact_match")


rbln_eval = cli_in_process  # ``rbln-eval ARGS`` in this process


def rbln_eval_process(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RBLN_EVAL_SIMULATE": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rbln_eval", *args], capture_output=True, text=True, env=env, timeout=300)


def results_of(directory: Path) -> tuple[Path, dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """The one results file under ``directory``, its content, and its samples by task (in document order)."""
    files = sorted(directory.rglob("results_*.json"))
    assert len(files) == 1, files
    samples = {}
    for path in files[0].parent.glob("samples_*.jsonl"):
        task = path.name[len("samples_") :].rsplit("_", 1)[0]
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        samples[task] = sorted(rows, key=lambda row: row["doc_id"])
    return files[0], json.loads(files[0].read_text()), samples


def scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        task: {k: v for k, v in metrics.items() if k.split(",")[0] in SCORES} for task, metrics in results["results"].items()
    }


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny causal model with two chat templates, its bundle (batch 2), and the demo tasks plus one marked unsafe."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("run-cli")
    model_dir = root / "chat-llama"
    shutil.copytree(MODEL_DIRS["causal"], model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = dict(TEMPLATES)
    tokenizer.save_pretrained(model_dir)
    tasks = root / "tasks"
    shutil.copytree(TASKS_DIR, tasks)
    cloze = (tasks / "demo_cloze.yaml").read_text()
    (tasks / "demo_unsafe.yaml").write_text(cloze.replace("task: demo_cloze", "task: demo_unsafe") + "unsafe_code: true\n")
    store = root / "store"
    bundle = compile_bundle(plan_compile(str(model_dir), CompileOptions(batch_size=2)), Store(store)).bundle
    return {"root": root, "model": str(model_dir), "tasks": str(tasks), "store": str(store), "digest": bundle.digest}


def hf_run(model: str, output: Path, *options: str) -> tuple[Path, dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """lm_eval's own ``run`` with its ``hf`` model on ``model`` (CPU, float32): its results file and samples."""
    code, out, err = rbln_eval(
        "lm-eval", "run", "--model", "hf", "--model_args", f"pretrained={model},dtype=float32", "--device", "cpu",
        "--batch_size", "4", *options, "--output_path", str(output),
    )
    assert code == 0, err[-3000:]
    return results_of(output)


def prompts(samples: dict[str, list[dict[str, Any]]]) -> dict[str, list[Any]]:
    """Each task's requests (prompts and generation settings), in document order."""
    return {task: [row["arguments"] for row in sorted(rows, key=lambda r: r["doc_id"])] for task, rows in samples.items()}


def test_chat_template_prompts_and_scores_are_hf_s(chat: dict[str, Any]) -> None:
    from lm_eval.utils import sanitize_model_name

    output = chat["root"] / "chat-default"
    options = [
        "--tasks", "demo_gen,demo_mc", "--include_path", TASKS_DIR, "--limit", "3", "--num_fewshot", "1",
        "--apply_chat_template", "--fewshot_as_multiturn", "--system_instruction", SYSTEM, "--log_samples",
    ]
    code, out, err = rbln_eval("run", "--artifact", chat["digest"][:10], "--store", chat["store"], *options, "--output_path", str(output))
    assert code == 0, err[-3000:]
    path, ours, our_samples = results_of(output)
    _, ref, ref_samples = hf_run(chat["model"], chat["root"] / "chat-default-hf", *options)
    assert prompts(our_samples) == prompts(ref_samples)
    first_gen = our_samples["demo_gen"][0]["arguments"]["gen_args_0"]["arg_0"]
    assert first_gen.startswith(f"<system>{SYSTEM}\n<user>") and first_gen.endswith("<assistant>")
    assert first_gen.count("<user>") == 2  # the few-shot example is a turn of its own
    assert scores(ours) == scores(ref)
    assert ours["chat_template"] == TEMPLATES["default"] and ours["fewshot_as_multiturn"] is True
    assert ours["system_instruction"] == SYSTEM
    # named after the model the bundle was compiled from, as hf names results after pretrained=
    model_path = str(Path(chat["model"]).resolve())
    assert ours["model_name"] == model_path and ours["model_source"] == "rbln"
    assert path.parent == output / sanitize_model_name(model_path)
    assert ours["config"]["model_args"] == {"artifact": chat["digest"][:10]}
    assert ours["config"]["rbln"]["bundle_digest"] == chat["digest"]


def test_a_named_chat_template_is_hf_s(chat: dict[str, Any]) -> None:
    output = chat["root"] / "chat-terse"
    options = ["--limit", "2", "--apply_chat_template", "terse", "--system_instruction", SYSTEM, "--tasks", "demo_mc"]
    code, out, err = rbln_eval(
        "run", "--artifact", chat["digest"], "--store", chat["store"], "--include-path", TASKS_DIR, *options,
        "--log-samples", "--output-path", str(output),
    )
    assert code == 0, err[-3000:]
    _, ours, our_samples = results_of(output)
    _, ref, ref_samples = hf_run(chat["model"], chat["root"] / "chat-terse-hf", "--include_path", TASKS_DIR, *options, "--log_samples")
    assert prompts(our_samples) == prompts(ref_samples)
    # lm_eval records the named template; its hf model renders prompts with the tokenizer's default one
    assert ours["chat_template"] == ref["chat_template"] == TEMPLATES["terse"]
    assert scores(ours) == scores(ref)


def test_lm_eval_options_reach_lm_eval_as_lm_eval_run_passes_them(chat: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RBLN_EVAL_STORE", chat["store"])
    options = [
        "--tasks", "demo_cloze", "demo_gen", "demo_unsafe", "--include_path", chat["tasks"],
        "--samples", json.dumps({"demo_cloze": [0, 2], "demo_gen": [1], "demo_unsafe": [3]}),
        "--metadata", json.dumps({"purpose": "check", "levels": [1, 2]}), "--system_instruction", SYSTEM,
        "--confirm_run_unsafe_code", "--log_samples", "--seed", "7",
    ]
    ours_dir, theirs_dir = chat["root"] / "ours", chat["root"] / "theirs"
    code, out, err = rbln_eval("run", "--model", chat["model"], *options, "--output_path", str(ours_dir))
    assert code == 0, err[-3000:]
    code, out, err = rbln_eval(
        "lm-eval", "run", "--model", "rbln", "--model_args", f"pretrained={chat['model']}",
        *options, "--output_path", str(theirs_dir),
    )
    assert code == 0, err[-3000:]
    ours_path, ours, our_samples = results_of(ours_dir)
    theirs_path, theirs, their_samples = results_of(theirs_dir)
    # --model X is named X, as `lm-eval --model rbln --model_args pretrained=X` names it
    assert ours_path.parent.relative_to(ours_dir) == theirs_path.parent.relative_to(theirs_dir)
    for key in ("model_name", "model_name_sanitized", "model_source", "system_instruction", "system_instruction_sha",
                "chat_template", "fewshot_as_multiturn", "n-samples", "task_hashes", "versions", "n-shot"):
        assert ours[key] == theirs[key], key
    assert ours["model_name"] == chat["model"]
    assert ours["config"]["model_args"] == theirs["config"]["model_args"] == {"pretrained": chat["model"]}
    # task configs, their metadata (the model_args merged with --metadata) included
    assert ours["configs"] == theirs["configs"]
    assert ours["configs"]["demo_cloze"]["metadata"]["purpose"] == "check"
    assert ours["configs"]["demo_unsafe"]["unsafe_code"] is True
    for key in ("model", "limit", "bootstrap_iters", "gen_kwargs", "random_seed", "numpy_seed", "torch_seed", "fewshot_seed"):
        assert ours["config"][key] == theirs["config"][key], key
    assert ours["config"]["random_seed"] == 7
    assert ours["config"]["rbln"]["bundle_digest"] == theirs["config"]["rbln"]["bundle_digest"]
    # --samples picks the same documents; the prompts (system instruction first) and answers are the same
    assert {task: [row["doc_id"] for row in rows] for task, rows in our_samples.items()} == {
        "demo_cloze": [0, 2], "demo_gen": [1], "demo_unsafe": [3]
    }
    assert our_samples == their_samples
    assert our_samples["demo_gen"][0]["arguments"]["gen_args_0"]["arg_0"].startswith(SYSTEM)
    assert scores(ours) == scores(theirs)


def test_a_tokenizer_without_a_chat_template_is_refused_before_loading(tmp_path_factory: pytest.TempPathFactory) -> None:
    bundle = shared_bundle(tmp_path_factory)
    code, out, err = rbln_eval(
        "run", "--artifact", bundle.digest, "--store", str(bundle.path.parent.parent), "--tasks", "demo_mc",
        "--include_path", TASKS_DIR, "--apply_chat_template",
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: Cannot use chat template functions because tokenizer.chat_template is not set")
    assert "loaded" not in err and "loading" not in err


def test_an_unknown_template_name_is_refused_before_loading(chat: dict[str, Any]) -> None:
    code, out, err = rbln_eval(
        "run", "--artifact", chat["digest"], "--store", chat["store"], "--tasks", "demo_mc", "--include_path", TASKS_DIR,
        "--apply_chat_template", "chatty",
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "error: The specified chat template 'chatty' is not available. Available template names are ['default', 'terse']."
    )
    assert "loaded" not in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch_size", "auto", "--model", str(MODEL_DIRS["causal"])],
         "error: --batch_size 'auto' must be a positive integer (the compiled batch size)"),
        (["--batch_size", "0", "--model", str(MODEL_DIRS["causal"])],
         "error: --batch_size '0' must be a positive integer (the compiled batch size)"),
        (["--log_samples"], "error: Specify --output_path if providing --log_samples or --predict_only"),
        (["--predict_only"], "error: Specify --output_path if providing --log_samples or --predict_only"),
        (["--batch_size", "auto"], "error: --batch_size 'auto' must be a positive integer (the compiled batch size)"),
        (["--limit", "abc"], "error: argument --limit/-L: invalid float value: 'abc'"),
        (["--samples", '{"demo_mc": [0]}', "--limit", "2"], "error: If --samples is not None, then --limit must be None."),
        (["--fewshot_as_multiturn"], "error: When `fewshot_as_multiturn` is True, `apply_chat_template` must be set."),
        (["--max_batch_size", "4"], "error: --max_batch_size: lm_eval's model settings are not taken here; rbln-eval run "
         "names the bundle with --artifact or --model, its compiled batch size with --batch_size and its NPUs with --device"),
        (["--model_args", "artifact=other"], "error: --model_args artifact: not a setting of the scoring"),
        (["--bootstrap_iters", "-1"], "error: --bootstrap_iters must be 0 or more, got -1"),
    ],
)
def test_bad_options_are_refused_in_one_line_before_loading(tmp_path: Path, args: list[str], message: str) -> None:
    reference = [] if "--model" in args else ["--artifact", "0" * 12]
    code, out, err = rbln_eval(
        "run", *reference, "--store", str(tmp_path / "store"), "--tasks", "demo_mc", "--include_path", TASKS_DIR, *args
    )
    assert code == 2, err
    assert err.strip().splitlines()[-1].startswith(message), err
    assert "compiling" not in err and "loaded" not in err


def test_refusals_are_one_line_and_exit_2_from_the_command_line(tmp_path: Path) -> None:
    """Each in its own process: nothing else on stderr, nothing loaded or compiled, nothing written."""
    store = str(tmp_path / "store")
    common = ["--store", store, "--include_path", TASKS_DIR]
    cases = [
        (["run", "--artifact", "3f2a9c", "--tasks", "demo_mc", "--log_samples", *common],
         "error: Specify --output_path if providing --log_samples or --predict_only"),
        (["run", "--artifact", "3f2a9c", "--batch_size", "auto", "--tasks", "demo_mc", *common],
         "error: --batch_size 'auto' must be a positive integer (the compiled batch size)"),
        (["run", "--artifact", "3f2a9c", "--tasks", "demo_mc", "--limit", "abc", *common],
         "error: argument --limit/-L: invalid float value: 'abc'"),
        (["run", "--artifact", "3f2a9c", "--tasks", "no_such_task", *common],
         "error: unknown task(s): no_such_task: list them with `rbln-eval lm-eval ls tasks` or add --include_path DIR"),
    ]
    for args, message in cases:
        result = rbln_eval_process(*args)
        assert result.returncode == 2, (args, result.stderr[-2000:])
        assert result.stderr.strip().splitlines() == [message], (args, result.stderr[-2000:])
    assert not Path(store).exists() or not list(Path(store).rglob("bundles/*"))


def test_help_lists_lm_eval_s_own_options() -> None:
    from rbln_eval.evaluation.evaluate import RBLN_SETTINGS, lm_eval_option_strings, lm_eval_run_parser

    code, out, err = rbln_eval("run", "--help")
    assert code == 0
    for string, action in lm_eval_option_strings(lm_eval_run_parser()).items():
        if action.dest not in (*RBLN_SETTINGS, "help") and string.startswith("--"):
            assert string in out, string
    for own in ("--artifact", "--bootstrap_iters", "--device", "--data-parallel", "--store", "--remote"):
        assert own in out


def test_a_config_file_is_read_as_lm_eval_reads_it(tmp_path: Path) -> None:
    """``--config`` YAML sets lm_eval's options (and is checked like them); lm_eval's model settings in it are refused."""
    common = ["run", "--artifact", "0" * 12, "--store", str(tmp_path / "store")]
    config = tmp_path / "eval.yaml"
    config.write_text(f"tasks: [demo_mc]\ninclude_path: {TASKS_DIR}\nlog_samples: true\n")
    code, out, err = rbln_eval(*common, "--config", str(config))
    assert code == 2
    assert err.strip().splitlines()[-1] == "error: Specify --output_path if providing --log_samples or --predict_only"
    config.write_text(f"tasks: [demo_mc]\ninclude_path: {TASKS_DIR}\nbatch_size: 8\ndevice: cuda:0\n")
    code, out, err = rbln_eval(*common, "--config", str(config))
    assert code == 2
    assert err.strip().splitlines()[-1].startswith(
        f"error: batch_size in {config}, device in {config}: lm_eval's model settings are not taken here"
    )
    code, out, err = rbln_eval(*common, "--config", str(tmp_path / "missing.yaml"))
    assert code == 2 and "Config file not found" in err.strip().splitlines()[-1]
