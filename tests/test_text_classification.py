"""Text classifiers (a tiny RoBERTa and XLM-RoBERTa built locally) scored on local dataset tasks of sentences and sentence pairs.

Predictions equal transformers float32 on the same tokens, logits within 1e-4, metrics equal scikit-learn over
transformers' predictions, at batch 1 and a compiled batch with a ragged last batch; data-parallel workers agree;
``--max-seq-len`` sets the compiled length the examples are truncated to; labels that do not match the model's stop
the run in one line before any device work; a sequence classifier and a masked LM of the same type are told apart.
"""

from __future__ import annotations

import json
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

from classifiermodels import MAX_POSITIONS, MAX_TOKENS, TEXT_LABELS, text_tasks, tiny_text_classifier  # noqa: E402
from rbln_eval.api import CompileOptions, evaluate_dataset_bundle, open_classifier  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402
from rbln_eval.errors import ConfigError  # noqa: E402
from rbln_eval.evaluation.evaluate import EvalOptions  # noqa: E402
from rbln_eval.store import Bundle, Store  # noqa: E402

BATCH = 4
EXAMPLES = 7  # over 4 rows: a ragged last batch
TASKS = ("cls_sentences", "cls_pairs")
SHORT = 24  # a --max-seq-len below the model's positions


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("text-classification")


@pytest.fixture(scope="module")
def model(scratch: Path) -> Path:
    return tiny_text_classifier(str(scratch / "models"))


@pytest.fixture(scope="module")
def tasks(scratch: Path) -> Path:
    return text_tasks(str(scratch), EXAMPLES)


@pytest.fixture(scope="module")
def bundles(scratch: Path, model: Path) -> dict[int, Bundle]:
    store = Store(scratch / "store")
    return {batch: compile_bundle(plan_compile(str(model), CompileOptions(batch_size=batch)), store).bundle for batch in (1, BATCH)}


def evaluate(bundle: Bundle, tasks: Path, names: tuple[str, ...] = TASKS, **placement: Any) -> dict[str, Any]:
    with open_classifier(bundle, **placement) as classifier:
        results = evaluate_dataset_bundle(classifier, EvalOptions(tasks=list(names), include_path=str(tasks), log_samples=True))
        results["counters"] = classifier.info()["device_counters"]
    return results


def reference(model_dir: Path, tasks: Path, task: str, max_tokens: int = MAX_TOKENS, padded: bool = True) -> np.ndarray:
    """transformers float32 logits of every example, truncated to ``max_tokens`` (the compiled length) and padded to it
    as the compiled graph takes it, or not padded at all."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    classifier = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in (tasks / f"{task}.jsonl").read_text().splitlines()]
    logits = []
    with torch.no_grad():
        for row in rows:
            text = (row["premise"], row["hypothesis"]) if "premise" in row else (row["sentence"],)
            padding = "max_length" if padded else False
            encoded = tokenizer(*text, truncation=True, max_length=max_tokens, padding=padding, return_tensors="pt")
            logits.append(classifier(**encoded).logits[0].numpy())
    return np.stack(logits)


def assert_equal_to_reference(results: dict[str, Any], task: str, expected: np.ndarray) -> float:
    """Predictions, logits and metrics of ``task`` against transformers' logits; the largest logit difference."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
    largest = 0.0
    for sample, logits in zip(samples, expected):
        ours = dict(sample["top_k"])  # every label's logit (three labels: the top 5 hold them all)
        assert sorted(ours) == sorted(TEXT_LABELS)
        largest = max(largest, max(abs(ours[label] - float(logits[i])) for i, label in enumerate(TEXT_LABELS)))
    assert largest <= 1e-4
    predicted = [TEXT_LABELS[i] for i in expected.argmax(axis=1)]
    assert [s["prediction"] for s in samples] == predicted
    assert len(set(predicted)) == len(TEXT_LABELS)  # the examples are told apart
    truth = [s["target"] for s in samples]
    scores = results["results"][task]
    assert scores["top1,none"] == accuracy_score(truth, predicted)
    assert 0 < scores["top1,none"] < 1
    assert scores["macro_f1,none"] == pytest.approx(f1_score(truth, predicted, average="macro", labels=list(TEXT_LABELS), zero_division=0))
    assert scores["mcc,none"] == pytest.approx(matthews_corrcoef(truth, predicted))
    assert scores["top5,none"] == 1.0  # three labels
    assert results["n-samples"][task] == {"original": EXAMPLES, "effective": EXAMPLES}
    return largest


@pytest.mark.parametrize("batch", [1, BATCH])
def test_predictions_logits_and_metrics_equal_transformers(batch: int, bundles: dict, model: Path, tasks: Path) -> None:
    results = evaluate(bundles[batch], tasks)
    for task in TASKS:
        assert_equal_to_reference(results, task, reference(model, tasks, task))
        unpadded = reference(model, tasks, task, padded=False)  # padding changes no prediction
        samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
        assert [s["prediction"] for s in samples] == [TEXT_LABELS[i] for i in unpadded.argmax(axis=1)]
    calls = -(-EXAMPLES // batch) * len(TASKS)
    assert results["counters"] == {"model": {"calls": calls, "tokens": calls * batch}}


def test_an_xlm_roberta_classifier_equals_transformers(scratch: Path, tasks: Path) -> None:
    model = tiny_text_classifier(str(scratch / "models"), "xlm-roberta")
    bundle = compile_bundle(plan_compile(str(model), CompileOptions(batch_size=BATCH)), Store(scratch / "store")).bundle
    assert bundle.key.model_class == "text-classification" and bundle.key.compile["max_seq_len"] == MAX_TOKENS
    results = evaluate(bundle, tasks)
    for task in TASKS:
        assert_equal_to_reference(results, task, reference(model, tasks, task))


def test_data_parallel_predicts_identically(bundles: dict, tasks: Path) -> None:
    one = evaluate(bundles[BATCH], tasks)
    two = evaluate(bundles[BATCH], tasks, data_parallel=2)
    assert two["config"]["rbln"]["workers"] and len(two["config"]["rbln"]["workers"]) == 2
    assert one["samples"] == two["samples"] and one["results"] == two["results"]


def test_labels_that_do_not_match_stop_before_any_device_work(bundles: dict, tasks: Path) -> None:
    with open_classifier(bundles[BATCH]) as classifier:
        with pytest.raises(ConfigError) as caught:
            evaluate_dataset_bundle(classifier, EvalOptions(tasks=["cls_text_other"], include_path=str(tasks)))
        assert classifier.info()["device_counters"] == {}
    message = str(caught.value)
    assert "\n" not in message and message.startswith("task cls_text_other: 2 of its 2 labels ('negative', 'positive'…)")
    assert "map them with label_map in the task YAML" in message


def test_max_seq_len_sets_the_compiled_length_examples_are_truncated_to(scratch: Path, model: Path, tasks: Path, bundles: dict) -> None:
    assert bundles[BATCH].key.compile["max_seq_len"] == MAX_TOKENS  # default: the positions RoBERTa's offset leaves
    assert (bundles[BATCH].path / "tokenizer_config.json").is_file()
    short = compile_bundle(plan_compile(str(model), CompileOptions(batch_size=BATCH, max_seq_len=SHORT)), Store(scratch / "store")).bundle
    assert short.key.compile["max_seq_len"] == SHORT
    compiled = json.loads((short.path / "rbln_config.json").read_text())["_compile_cfgs"][0]["input_info"]
    assert compiled == [["input_ids", [BATCH, SHORT], "int64"], ["attention_mask", [BATCH, SHORT], "int64"]]
    results = evaluate(short, tasks)
    for task in TASKS:
        expected = reference(model, tasks, task, max_tokens=SHORT)
        samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
        assert [s["prediction"] for s in samples] == [TEXT_LABELS[i] for i in expected.argmax(axis=1)]
        differences = [abs(dict(s["top_k"])[label] - float(row[i])) for s, row in zip(samples, expected) for i, label in enumerate(TEXT_LABELS)]
        assert max(differences) <= 1e-4
    with pytest.raises(ConfigError, match=f"at most the model's {MAX_POSITIONS} positions"):
        plan_compile(str(model), CompileOptions(max_seq_len=MAX_POSITIONS + 1))


def test_a_sequence_classifier_and_a_masked_lm_of_one_type_are_told_apart() -> None:
    from transformers import BertConfig, RobertaConfig, XLMRobertaConfig

    from rbln_eval.families.registry import detect_family

    def family(config: Any) -> str | None:
        found = detect_family(config)
        return found.name if found else None

    assert family(RobertaConfig(architectures=["RobertaForSequenceClassification"])) == "text-classification"
    assert family(XLMRobertaConfig(architectures=["XLMRobertaForSequenceClassification"])) == "text-classification"
    assert family(RobertaConfig(architectures=["RobertaForMaskedLM"])) == "masked-lm"
    assert family(RobertaConfig()) is None  # no head named: neither
    assert family(BertConfig(architectures=["BertForSequenceClassification"])) is None  # optimum-rbln 0.12.0 has no BERT classifier


def test_a_pair_task_names_its_columns_by_role() -> None:
    from rbln_eval.evaluation.datasets.spec import DatasetTask, dataset_tasks

    assert dict(dataset_tasks()["cls_mnli"].columns) == {"text": "premise", "text_pair": "hypothesis"}
    base = {"dataset_task": "cls_typo", "kind": "text-classification", "dataset_path": "json", "split": "test", "label": "label",
            "metrics": ["top1"]}
    refused = r"^dataset task cls_typo: columns has no role 'text_pairs' \(text-classification: text, text_pair\)$"
    with pytest.raises(ConfigError, match=refused):
        DatasetTask.from_config({**base, "columns": {"text": "premise", "text_pairs": "hypothesis"}}, None)
    with pytest.raises(ConfigError, match="columns must name the text column"):
        DatasetTask.from_config({**base, "columns": {"text_pair": "hypothesis"}}, None)
