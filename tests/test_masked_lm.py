"""Masked LMs (tiny BERT and RoBERTa, built locally) scored by pseudo-log-likelihood on the simulator.

Every request's log-likelihood equals minicons' ``MaskedLMScorer`` (an independent PLL implementation) within
1e-4, for both PLL variants, at batch 1 and the compiled batch; data-parallel workers give identical results;
the ``rbln`` model and ``rbln-eval run`` open these bundles, and a ``generate_until`` task is refused.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import rbln_eval.sim as sim

try:
    sim.activate()
except sim.SimulatorConflictError:  # a real rebel SDK is installed: these tests need the simulator
    pytest.skip("a real rebel SDK is installed", allow_module_level=True)

from lmhelpers import sample_values  # noqa: E402
from mlmmodels import mlm_tasks, tiny_masked_lm  # noqa: E402
from remotehelpers import ok, one_line_exit_2, results_file  # noqa: E402
from rbln_eval.api import CompileOptions, open_lm  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402
from rbln_eval.errors import ConfigError  # noqa: E402
from rbln_eval.store import Bundle, Store  # noqa: E402

BATCH = 4
TOLERANCE = 1e-4
VARIANTS = ("within_word_l2r", "original")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("masked-lm")


@pytest.fixture(scope="module")
def tasks(scratch: Path) -> Path:
    return mlm_tasks(str(scratch))


@pytest.fixture(scope="module")
def bundles(scratch: Path) -> dict[tuple[str, int], Bundle]:
    store = Store(scratch / "store")
    built = {}
    for kind in ("bert", "roberta"):
        model = tiny_masked_lm(str(scratch / "models"), kind)
        for batch in (1, BATCH):
            request = plan_compile(str(model), CompileOptions(batch_size=batch, max_seq_len=64))
            built[kind, batch] = compile_bundle(request, store).bundle
    return built


@pytest.fixture(scope="module")
def scorers(scratch: Path) -> dict[str, Any]:
    from minicons.scorer import MaskedLMScorer

    scorers = {}
    for kind in ("bert", "roberta"):
        scorer = MaskedLMScorer(str(tiny_masked_lm(str(scratch / "models"), kind)), "cpu")
        # minicons 0.3.39 encodes with ``batch_encode_plus``, which transformers 5 no longer has: the same call.
        scorer.tokenizer.batch_encode_plus = scorer.tokenizer.__call__
        scorers[kind] = scorer
    return scorers


def evaluate(lm: Any, tasks: Path, names: tuple[str, ...] = ("mlm_cola", "mlm_ppl")) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=lm, tasks=list(names), log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
    )


def minicons_scores(scorer: Any, results: dict[str, Any], variant: str) -> dict[str, list[list[float]]]:
    """minicons' PLL of every request lm_eval logged, in the same layout as :func:`sample_values`."""
    total = lambda x: x.sum().item()  # noqa: E731
    expected: dict[str, list[list[float]]] = {}
    for task, samples in results["samples"].items():
        rows = []
        for sample in sorted(samples, key=lambda s: s["doc_id"]):
            if task == "mlm_ppl":
                rows.append([scorer.sequence_score(sample["arguments"][0][0], reduction=total, PLL_metric=variant)[0]])
                continue
            row = []
            for context, continuation in [a[:2] for a in sample["arguments"]]:
                assert continuation.startswith(" ")  # lm_eval's target delimiter: minicons' separator
                row.append(scorer.conditional_score(context, continuation[1:], reduction=total, PLL_metric=variant)[0])
            rows.append(row)
        expected[task] = rows
    return expected


def logprobs(values: dict[str, list[list[Any]]]) -> dict[str, list[list[float]]]:
    return {task: [[v[0] if isinstance(v, (list, tuple)) else v for v in row] for row in rows] for task, rows in values.items()}


def assert_close(ours: dict[str, list[list[float]]], expected: dict[str, list[list[float]]]) -> None:
    assert ours.keys() == expected.keys()
    for task in ours:
        assert len(ours[task]) == len(expected[task]), task
        for got, want in zip(ours[task], expected[task]):
            assert len(got) == len(want)
            for a, b in zip(got, want):
                assert abs(a - b) <= TOLERANCE, (task, got, want)


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_every_request_equals_minicons_pll(kind: str, bundles: dict, scorers: dict, tasks: Path) -> None:
    by_variant = {}
    for variant in VARIANTS:
        expected = None
        for batch in (1, BATCH):
            with open_lm(bundles[kind, batch], pll=variant) as lm:
                results = evaluate(lm, tasks)
            ours = logprobs(sample_values(results))
            expected = expected or minicons_scores(scorers[kind], results, variant)
            assert_close(ours, expected)
            info = results["config"]["rbln"]
            copies = info["pll"]["masked_copies"]
            assert info["pll"]["variant"] == variant
            assert info["device_counters"]["encoder"]["calls"] == math.ceil(copies / batch)
            assert info["device_counters"]["encoder"]["tokens"] == math.ceil(copies / batch) * batch * 64
            assert copies <= info["pll"]["scored_tokens"]
            assert "mcc,none" in results["results"]["mlm_cola"]
        by_variant[variant] = ours
    assert by_variant["within_word_l2r"] != by_variant["original"]  # continuations with words of several tokens


def test_data_parallel_scores_identically(bundles: dict, tasks: Path) -> None:
    bundle = bundles["bert", BATCH]
    with open_lm(bundle, device=0) as lm:
        single = evaluate(lm, tasks)
    with open_lm(bundle, data_parallel=2) as lm:
        parallel = evaluate(lm, tasks)
    assert sample_values(parallel) == sample_values(single)
    assert parallel["results"] == single["results"]
    info = parallel["config"]["rbln"]
    assert info["data_parallel"] == 2
    assert all(worker["requests"] for worker in info["workers"])
    copies = single["config"]["rbln"]["pll"]["masked_copies"]
    assert sum(w["device_counters"]["encoder"]["calls"] for w in info["workers"]) >= math.ceil(copies / BATCH)


def test_rolling_windows_and_left_truncation_equal_minicons(bundles: dict, scorers: dict) -> None:
    import torch
    from transformers import BatchEncoding

    scorer = scorers["bert"]
    tokenizer = scorer.tokenizer

    def reference(tokens: list[int], start: int) -> float:
        """minicons' original PLL of ``tokens[start:]`` with all of ``tokens`` visible."""
        ids = torch.tensor([[tokenizer.cls_token_id, *tokens, tokenizer.sep_token_id]])
        encoded = BatchEncoding({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        batch = scorer.get_masked_tensors(encoded, PLL_metric="original", targets_start=[1 + start], targets_end=[1 + len(tokens)])
        return sum(scorer.compute_stats(batch)[0])

    class Request:
        def __init__(self, args: tuple) -> None:
            self.args = args

    text = " ".join(["the quick brown fox jumps over the lazy dog while the cat sleeps on the warm mat"] * 8)
    with open_lm(bundles["bert", BATCH], pll="original") as lm:
        tokens = lm.tok_encode(text)
        assert len(tokens) > 2 * 62
        [rolling] = lm.loglikelihood_rolling([Request((text,))], disable_tqdm=True)
        windows = [tokens[i : i + 62] for i in range(0, len(tokens), 62)]
        assert abs(rolling - sum(reference(w, 0) for w in windows)) <= TOLERANCE
        context, continuation = text, " the warm mat"
        [(score, _)] = lm.loglikelihood([Request((context, continuation))], disable_tqdm=True)
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    kept = whole[-62:]
    length = len(tokenizer(continuation, add_special_tokens=False)["input_ids"])
    assert abs(score - reference(kept, len(kept) - length)) <= TOLERANCE


def test_generation_is_refused_before_any_device_work(bundles: dict) -> None:
    class Request:
        task_name = "mlm_gen"

        def __init__(self, args: tuple) -> None:
            self.args = args

    with open_lm(bundles["bert", BATCH]) as lm:
        with pytest.raises(ConfigError, match=r"^task\(s\) mlm_gen ask for generate_until requests, which masked-lm bundles do not answer$"):
            lm.generate_until([Request(("The cat", {"until": ["."]}))])
        assert lm.device_counters == {}
        # one-token choices of one question mask the same copy: it is run once and read for each
        scores = lm.loglikelihood([Request(("The cat sat", " on")), Request(("The cat sat", " the"))], disable_tqdm=True)
        assert lm.masked_copies == 1 and lm.device_counters["encoder"]["calls"] == 1
        assert scores[0] != scores[1]
    with pytest.raises(ConfigError, match=r"^pll must be one of within_word_l2r, original, got 'pseudo'$"):
        open_lm(bundles["bert", BATCH], pll="pseudo")


def start_cli(*args: str) -> subprocess.Popen:
    """Start ``rbln-eval`` on the simulator (the commands below run side by side)."""
    env = {**os.environ, "RBLN_EVAL_SIMULATE": "1", "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "rbln_eval", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_rbln_model_and_run_open_masked_lm_bundles(scratch: Path, tasks: Path, bundles: dict) -> None:
    model = tiny_masked_lm(str(scratch / "models"), "bert")
    digest = bundles["bert", BATCH].digest  # the commands find this bundle: nothing is compiled again
    store, out = scratch / "store", scratch / "cli-out"
    shape = ["--batch-size", str(BATCH), "--max-seq-len", "64", "--store", str(store), "--include_path", str(tasks)]
    run = start_cli("run", "--model", str(model), "--tasks", "mlm_cola", "--bootstrap_iters", "0", "--output_path", str(out / "run"), *shape)
    generate = start_cli("run", "--model", str(model), "--tasks", "mlm_cola,mlm_gen", *shape)
    model_args = f"pretrained={model},export=True,rbln_batch_size={BATCH},rbln_max_seq_len=64,store={store},pll=original"
    via_lm_eval = start_cli(
        "lm-eval", "run", "--model", "rbln", "--model_args", model_args, "--tasks", "mlm_ppl", "--include_path", str(tasks),
        "--output_path", str(out / "lm-eval"),
    )
    ok(finished(run))
    ran = results_file(out / "run")
    assert ran["config"]["model"] == "rbln" and ran["config"]["rbln"]["bundle_digest"] == digest
    assert ran["config"]["rbln"]["pll"]["variant"] == "within_word_l2r"
    assert isinstance(ran["results"]["mlm_cola"]["mcc,none"], float)
    refused = finished(generate)
    one_line_exit_2(refused, "task(s) mlm_gen ask for generate_until requests, which masked-lm bundles do not answer")
    assert "rbln loglikelihood" not in refused.stderr  # refused before mlm_cola's requests ran
    ok(finished(via_lm_eval))
    rolling = results_file(out / "lm-eval")
    assert rolling["config"]["rbln"]["bundle_digest"] == digest and rolling["config"]["rbln"]["pll"]["variant"] == "original"
    assert rolling["results"]["mlm_ppl"]["word_perplexity,none"] > 1


def test_compare_scores_the_reference_with_the_same_pll_variant(scratch: Path, tasks: Path, bundles: dict) -> None:
    """``--model_args pll=original`` reaches both sides: with the other variant on one side, the multi-token words'
    log-likelihoods would differ by far more than the tolerance."""
    import json

    report_path = scratch / "compare-pll.json"
    result = finished(start_cli(
        "compare", bundles["bert", BATCH].digest[:12], "--store", str(scratch / "store"), "--include_path", str(tasks),
        "--tasks", "mlm_ppl", "--model_args", "pll=original", "--tolerance", "1e-4", "--output", str(report_path),
    ))
    ok(result)
    report = json.loads(report_path.read_text())
    assert report["passed"] is True and report["reference"]["model"] == "hf-pll"
    assert report["reference"]["settings"] == {"pll": "original"}
    assert all(task["max_abs_logprob_delta"] <= 1e-4 for task in report["tasks"]), report["tasks"]
    refused = finished(start_cli("compare", bundles["bert", BATCH].digest[:12], "--store", str(scratch / "store"),
                                 "--include_path", str(tasks), "--tasks", "mlm_cola", "--model_args", "pll=pseudo"))
    one_line_exit_2(refused, "pll must be one of within_word_l2r, original, got 'pseudo'")
