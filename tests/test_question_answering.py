"""Extractive QA (a tiny BERT and DistilBERT built locally) scored on local SQuAD-like tasks, v1.1 and v2.

Every question's answer equals the one transformers float32 gives over the same windows (the question with each
overlapping window of its context, decoded by transformers' ``select_starts_ends``), its span probability within
1e-4, the windows' logits within 1e-4; exact match and F1 equal transformers' SQuAD functions over transformers'
answers; one device call per compiled batch of windows, at batch 1 and a ragged compiled batch; data-parallel
workers agree; unanswerable questions in a task that does not allow them stop the run before any device work.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rbln_eval.sim as sim

try:
    sim.activate()
except sim.SimulatorConflictError:  # a real rebel SDK is installed: these tests need the simulator
    pytest.skip("a real rebel SDK is installed", allow_module_level=True)

from qamodels import MAX_POSITIONS, qa_tasks, tiny_qa_model  # noqa: E402
from rbln_eval.api import CompileOptions, evaluate_dataset_bundle, open_classifier  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402
from rbln_eval.core.work import Media  # noqa: E402
from rbln_eval.errors import ConfigError  # noqa: E402
from rbln_eval.evaluation.evaluate import EvalOptions  # noqa: E402
from rbln_eval.store import Bundle, Store  # noqa: E402
from lmhelpers import cli_in_process  # noqa: E402
from remotehelpers import cli, ok, one_line_exit_2  # noqa: E402

BATCH = 4
QUESTIONS = 9
TASKS = ("qa_local", "qa_local_v2")
MAX_ANSWER = 30


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("question-answering")


@pytest.fixture(scope="module")
def tasks(scratch: Path) -> Path:
    return qa_tasks(str(scratch), QUESTIONS)


@pytest.fixture(scope="module")
def bundles(scratch: Path) -> dict[tuple[str, int], Bundle]:
    store = Store(scratch / "store")
    built = {}
    for kind, batches in (("bert", (1, BATCH)), ("distilbert", (BATCH,))):
        model = tiny_qa_model(str(scratch / "models"), kind)
        for batch in batches:
            built[kind, batch] = compile_bundle(plan_compile(str(model), CompileOptions(batch_size=batch)), store).bundle
    return built


def evaluate(bundle: Bundle, tasks: Path, names: tuple[str, ...] = TASKS, **placement: Any) -> dict[str, Any]:
    with open_classifier(bundle, **placement) as classifier:
        results = evaluate_dataset_bundle(classifier, EvalOptions(tasks=list(names), include_path=str(tasks), log_samples=True))
        results["counters"] = classifier.info()["device_counters"]
    return results


def reference_windows(tokenizer: Any, question: str, context: str) -> Any:
    """The question with each window of the context, as SQuAD's scripts cut them (a third of the length overlaps)."""
    room = MAX_POSITIONS - len(tokenizer(question, add_special_tokens=False)["input_ids"]) - 3
    return tokenizer(question, context, truncation="only_second", max_length=MAX_POSITIONS, stride=min(MAX_POSITIONS // 3, room - 1),
                     return_overflowing_tokens=True, return_offsets_mapping=True)


def reference(kind: str, scratch: Path, tasks: Path, task: str) -> tuple[list[tuple[str, float]], int]:
    """transformers float32 answers (text, probability) of every question, and the windows they took."""
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer
    from transformers.pipelines.document_question_answering import select_starts_ends

    path = tiny_qa_model(str(scratch / "models"), kind)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForQuestionAnswering.from_pretrained(path).eval()
    unanswerable = task == "qa_local_v2"
    answers, windows = [], 0
    for row in map(json.loads, (tasks / f"{task}.jsonl").read_text().splitlines()):
        encoded = reference_windows(tokenizer, row["question"], row["context"])
        best, null = ("", -1.0), 1_000_000.0
        for index, ids in enumerate(encoded["input_ids"]):
            inputs = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
            if kind == "bert":
                inputs["token_type_ids"] = torch.tensor([encoded["token_type_ids"][index]])
            with torch.no_grad():
                out = model(**inputs)
            p_mask = np.asarray([0 if s == 1 else 1 for s in encoded.sequence_ids(index)])
            p_mask[0] = 0
            starts, ends, scores, null = select_starts_ends(out.start_logits.numpy(), out.end_logits.numpy(), p_mask, None,
                                                            min_null_score=null, handle_impossible_answer=unanswerable,
                                                            max_answer_len=MAX_ANSWER)
            offsets = encoded["offset_mapping"][index]
            for first, last, score in zip(starts, ends, scores):
                if score > best[1]:
                    best = (row["context"][offsets[first][0]:offsets[last][1]], float(score))
            windows += 1
        answers.append(("", null) if unanswerable and null > best[1] else best)
    return answers, windows


def assert_equal_to_reference(results: dict, task: str, expected: list[tuple[str, float]], golds: list[list[str]]) -> None:
    from transformers.data.metrics.squad_metrics import compute_exact, compute_f1

    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    assert [s["prediction"] for s in samples] == [text for text, _ in expected]
    assert max(abs(s["score"] - score) for s, (_, score) in zip(samples, expected)) <= 1e-4
    exact = [max(compute_exact(g, text) for g in (gold or [""])) for gold, (text, _) in zip(golds, expected)]
    f1 = [max(compute_f1(g, text) for g in (gold or [""])) for gold, (text, _) in zip(golds, expected)]
    scores = results["results"][task]
    assert scores["exact,none"] == pytest.approx(100 * sum(exact) / len(exact))
    assert scores["f1,none"] == pytest.approx(100 * sum(f1) / len(f1))
    assert 0 < scores["exact,none"] < scores["f1,none"] < 100  # some answers found, some partly, some missed
    if task == "qa_local_v2":
        has = [bool(g) for g in golds]
        assert scores["has_ans_exact,none"] == pytest.approx(100 * sum(e for e, h in zip(exact, has) if h) / sum(has))
        assert scores["no_ans_f1,none"] == pytest.approx(100 * sum(f for f, h in zip(f1, has) if not h) / (len(has) - sum(has)))
        assert any(s["prediction"] == "" for s in samples) or scores["no_ans_exact,none"] == 0
    assert results["n-samples"][task] == {"original": QUESTIONS, "effective": QUESTIONS}


def gold_answers(tasks: Path, task: str) -> list[list[str]]:
    return [row["answers"]["text"] for row in map(json.loads, (tasks / f"{task}.jsonl").read_text().splitlines())]


@pytest.mark.parametrize("kind,batch", [("bert", 1), ("bert", BATCH), ("distilbert", BATCH)])
def test_answers_and_metrics_equal_transformers(kind: str, batch: int, bundles: dict, scratch: Path, tasks: Path) -> None:
    results = evaluate(bundles[kind, batch], tasks)
    calls = 0
    for task in TASKS:
        expected, windows = reference(kind, scratch, tasks, task)
        assert windows > QUESTIONS  # long contexts take several windows
        assert_equal_to_reference(results, task, expected, gold_answers(tasks, task))
        calls += math.ceil(windows / batch)
    assert results["counters"] == {"model": {"calls": calls, "tokens": calls * batch}}


def test_window_logits_equal_transformers(bundles: dict, scratch: Path, tasks: Path) -> None:
    from transformers import AutoModelForQuestionAnswering

    for kind in ("bert", "distilbert"):
        bundle = bundles[kind, BATCH]
        model = AutoModelForQuestionAnswering.from_pretrained(tiny_qa_model(str(scratch / "models"), kind)).eval()
        encoder = bundle_family(bundle).load_preprocessor(bundle.path)
        row = json.loads((tasks / "qa_local.jsonl").read_text().splitlines()[2])  # a long context: several windows
        windows = encoder.windows(row["question"], row["context"])
        assert len(windows) > 1
        with open_classifier(bundle) as classifier:
            outputs = classifier.forward([Media(window, 1, "") for window in windows])
        for window, (start, end) in zip(windows, outputs):
            names = ["input_ids", "attention_mask"] + (["token_type_ids"] if kind == "bert" else [])
            with torch.no_grad():
                expected = model(**{name: window[name][None] for name in names})
            assert (start - expected.start_logits[0]).abs().max() <= 1e-4
            assert (end - expected.end_logits[0]).abs().max() <= 1e-4


def bundle_family(bundle: Bundle) -> Any:
    from rbln_eval.families.registry import family_of

    return family_of(bundle.key.model_class)


def test_data_parallel_answers_identically(bundles: dict, tasks: Path) -> None:
    one = evaluate(bundles["bert", BATCH], tasks)
    two = evaluate(bundles["bert", BATCH], tasks, data_parallel=2)
    assert len(two["config"]["rbln"]["workers"]) == 2
    assert one["samples"] == two["samples"] and one["results"] == two["results"]


def test_unanswerable_questions_need_the_task_to_allow_them(bundles: dict, tasks: Path, scratch: Path) -> None:
    strict = scratch / "strict-tasks"
    strict.mkdir(exist_ok=True)
    (strict / "qa_strict.yaml").write_text(
        (tasks / "qa_local_v2.yaml").read_text().replace("dataset_task: qa_local_v2", "dataset_task: qa_strict")
        .replace("unanswerable: true\n", "").replace("qa_local_v2.jsonl", str(tasks / "qa_local_v2.jsonl"))
    )
    with open_classifier(bundles["bert", BATCH]) as classifier:
        with pytest.raises(ConfigError) as caught:
            evaluate_dataset_bundle(classifier, EvalOptions(tasks=["qa_strict"], include_path=str(strict)))
        assert classifier.info()["device_counters"] == {}
    assert str(caught.value) == (
        "task qa_strict: 2 questions have no answer: set unanswerable: true in the task YAML (SQuAD v2) so the model may answer none"
    )


def test_run_scores_a_qa_task_and_detects_the_head(scratch: Path, tasks: Path, bundles: dict) -> None:
    from transformers import BertConfig, DistilBertConfig

    from rbln_eval.families.registry import detect_family

    model = tiny_qa_model(str(scratch / "models"), "bert")
    common = ["--store", str(scratch / "store"), "--include_path", str(tasks), "--batch-size", str(BATCH)]
    ran = ok(cli("run", "--model", str(model), "--tasks", "qa_local_v2", "--limit", "5", *common))
    assert "qa_local_v2" in ran.stdout and "has_ans_f1" in ran.stdout
    wrong = cli("run", "--artifact", bundles["bert", BATCH].digest[:12], "--tasks", "lambada_openai", *common[:2])
    one_line_exit_2(wrong, "(question-answering) is scored on dataset tasks: --tasks lambada_openai is not one")
    fresh = scratch / "fresh-store"  # a dataset not in the cache: refused before anything is compiled
    code, out, err = cli_in_process("run", "--model", str(model), "--tasks", "qa_squad", "--store", str(fresh))
    assert code == 2 and not fresh.exists(), err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: cannot load the dataset of task qa_squad (rajpurkar/squad)")
    assert detect_family(BertConfig(architectures=["BertForQuestionAnswering"])).name == "question-answering"
    assert detect_family(DistilBertConfig(architectures=["DistilBertForQuestionAnswering"])).name == "question-answering"
    assert detect_family(BertConfig(architectures=["BertForMaskedLM"])).name == "masked-lm"


def test_compare_holds_answers_and_logits_against_the_float32_model(bundles: dict, tasks: Path) -> None:
    from rbln_eval.evaluation.datasets.compare import compare_dataset_tasks, reference_forward
    from rbln_eval.evaluation.datasets.spec import dataset_tasks

    chosen = [dataset_tasks(str(tasks))[name] for name in TASKS]
    bundle = bundles["distilbert", BATCH]
    with open_classifier(bundle) as classifier:
        report = compare_dataset_tasks(classifier, chosen, None, 1e-4)
        assert report.passed and [task.task for task in report.tasks] == list(TASKS)
        for task in report.tasks:
            assert task.samples == QUESTIONS and task.argmax_agreement == 1.0
            assert task.max_abs_output_delta is not None and task.max_abs_output_delta <= 1e-4
            assert all(metric.delta == 0 for metric in task.metrics) and len(task.metrics) == (2 if task.task == "qa_local" else 6)
        shifted = reference_forward(bundle, bundle_family(bundle))
        with torch.no_grad():
            shifted.model.qa_outputs.bias.add_(0.01)  # every start and end logit 0.01 higher: the same answers
        off = compare_dataset_tasks(classifier, chosen[:1], None, 1e-4, reference=shifted)
    assert not off.passed and off.tasks[0].failures == ["max |Δ output| 0.01"]
    assert off.tasks[0].argmax_agreement == 1.0


def test_prefetch_loads_dataset_tasks_as_run_does(tasks: Path) -> None:
    no_hub = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    local = ok(cli("prefetch", "--tasks", "qa_local,qa_local_v2", "--include_path", str(tasks), env=no_hub))
    assert local.stdout.splitlines() == ["task qa_local: nothing to fetch (local files)", "task qa_local_v2: nothing to fetch (local files)"]
    hub = cli("prefetch", "--tasks", "qa_squad", env=no_hub)  # the built-in SQuAD task reads rajpurkar/squad
    one_line_exit_2(hub, "prefetch downloads into the HF caches: unset HF_HUB_OFFLINE and HF_DATASETS_OFFLINE")
