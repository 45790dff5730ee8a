"""Image classifiers (a tiny ViT and ResNet, built locally) scored on a local dataset task on the simulator.

Predictions equal transformers float32 on the same pixels, logits within 1e-4, metrics equal scikit-learn over
transformers' predictions, at batch 1 and a compiled batch with a ragged last batch; data-parallel workers agree;
labels that do not match the model's stop the run in one line before any device work; ``rbln-eval run`` picks
the dataset evaluator and writes lm_eval's results schema.
"""

from __future__ import annotations

import json
import subprocess
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

from imagemodels import LABELS, image_tasks, tiny_image_classifier  # noqa: E402
from lmhelpers import cli_in_process  # noqa: E402
from remotehelpers import ok, one_line_exit_2, results_file  # noqa: E402
from rbln_eval.api import CompileOptions, evaluate_dataset_bundle, open_classifier  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402
from rbln_eval.errors import ConfigError  # noqa: E402
from rbln_eval.evaluation.evaluate import EvalOptions  # noqa: E402
from rbln_eval.store import Bundle, Store  # noqa: E402

BATCH = 4
EXAMPLES = 7  # over 4 rows: a ragged last batch
KINDS = ("vit", "resnet")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image-classification")


@pytest.fixture(scope="module")
def tasks(scratch: Path) -> Path:
    return image_tasks(str(scratch), EXAMPLES)


@pytest.fixture(scope="module")
def bundles(scratch: Path) -> dict[tuple[str, int], Bundle]:
    store = Store(scratch / "store")
    built = {}
    for kind in KINDS:
        model = tiny_image_classifier(str(scratch / "models"), kind)
        for batch in (1, BATCH):
            built[kind, batch] = compile_bundle(plan_compile(str(model), CompileOptions(batch_size=batch)), store).bundle
    return built


def evaluate(bundle: Bundle, tasks: Path, **placement: Any) -> dict[str, Any]:
    with open_classifier(bundle, **placement) as classifier:
        results = evaluate_dataset_bundle(classifier, EvalOptions(tasks=["cls_shapes"], include_path=str(tasks), log_samples=True))
        results["counters"] = classifier.info()["device_counters"]
    return results


def reference(model_dir: Path, tasks: Path) -> np.ndarray:
    """transformers float32 logits of every image, prepared by the same PIL image processor."""
    import json

    from PIL import Image
    from transformers import AutoModelForImageClassification
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in (tasks / "shapes.jsonl").read_text().splitlines()]
    images = [Image.open(tasks / row["file"]).convert("RGB") for row in rows]
    with torch.no_grad():
        return model(**processor(images=images, return_tensors="pt")).logits.numpy()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch", [1, BATCH])
def test_predictions_logits_and_metrics_equal_transformers(kind: str, batch: int, bundles: dict, scratch: Path, tasks: Path) -> None:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    results = evaluate(bundles[kind, batch], tasks)
    expected = reference(tiny_image_classifier(str(scratch / "models"), kind), tasks)
    samples = sorted(results["samples"]["cls_shapes"], key=lambda s: s["doc_id"])
    for sample, logits in zip(samples, expected):
        ours = dict(sample["top_k"])  # every label's logit (four labels: the top 5 hold them all)
        assert sorted(ours) == sorted(LABELS)
        assert max(abs(ours[label] - float(logits[i])) for i, label in enumerate(LABELS)) <= 1e-4
    predicted = [LABELS[i] for i in expected.argmax(axis=1)]
    assert [s["prediction"] for s in samples] == predicted
    assert len(set(predicted)) > 1  # the images are told apart
    truth = [s["target"] for s in samples]
    scores = results["results"]["cls_shapes"]
    assert scores["top1,none"] == accuracy_score(truth, predicted)
    assert scores["macro_f1,none"] == pytest.approx(f1_score(truth, predicted, average="macro", labels=list(LABELS), zero_division=0))
    assert scores["mcc,none"] == pytest.approx(matthews_corrcoef(truth, predicted))
    assert scores["top5,none"] == 1.0  # four labels
    assert results["n-samples"]["cls_shapes"] == {"original": EXAMPLES, "effective": EXAMPLES}
    assert results["counters"] == {"model": {"calls": -(-EXAMPLES // batch), "tokens": -(-EXAMPLES // batch) * batch}}


def test_data_parallel_predicts_identically(bundles: dict, tasks: Path) -> None:
    one = evaluate(bundles["vit", BATCH], tasks)
    two = evaluate(bundles["vit", BATCH], tasks, data_parallel=2)
    assert two["config"]["rbln"]["workers"] and len(two["config"]["rbln"]["workers"]) == 2
    assert one["samples"] == two["samples"] and one["results"] == two["results"]


def test_labels_that_do_not_match_stop_before_any_device_work(bundles: dict, tasks: Path) -> None:
    with open_classifier(bundles["vit", BATCH]) as classifier:
        with pytest.raises(ConfigError) as caught:
            evaluate_dataset_bundle(classifier, EvalOptions(tasks=["cls_other"], include_path=str(tasks)))
        assert classifier.info()["device_counters"] == {}
    message = str(caught.value)
    assert "\n" not in message and message.startswith("task cls_other: 3 of its 3 labels ('class 0', 'class 1', 'class 2'…)")
    assert "map them with label_map in the task YAML" in message


def cli(*args: str) -> subprocess.CompletedProcess:
    """``rbln-eval ARGS`` in this process (on the simulator, activated above): its exit status and output."""
    code, out, err = cli_in_process(*args)
    return subprocess.CompletedProcess(["rbln-eval", *args], code, out, err)


def test_run_scores_dataset_tasks_and_refuses_mixing(scratch: Path, tasks: Path, bundles: dict) -> None:
    model = tiny_image_classifier(str(scratch / "models"), "vit")
    common = ["--store", str(scratch / "store"), "--include_path", str(tasks), "--batch-size", str(BATCH)]
    out = scratch / "cli-out"
    ran = ok(cli("run", "--model", str(model), "--tasks", "cls_shapes", "--limit", "5", "--output_path", str(out), "--log_samples", *common))
    saved = results_file(out)
    assert saved["config"]["rbln"]["bundle_digest"] == bundles["vit", BATCH].digest
    assert saved["n-samples"]["cls_shapes"] == {"original": EXAMPLES, "effective": 5}
    assert "top1" in ran.stdout and isinstance(saved["results"]["cls_shapes"]["top1,none"], float)
    assert len(list(out.rglob("samples_cls_shapes_*.jsonl"))) == 1
    mixed = cli("run", "--model", str(model), "--tasks", "cls_shapes,arc_easy", *common)
    one_line_exit_2(mixed, "--tasks mixes dataset tasks (cls_shapes) with lm_eval tasks (arc_easy)")
    wrong = cli("run", "--artifact", bundles["vit", BATCH].digest[:12], "--tasks", "lambada_openai", *common[:4])
    one_line_exit_2(wrong, "(image-classification) is scored on dataset tasks: --tasks lambada_openai is not one")


def test_builtin_dataset_tasks_are_named_apart_from_lm_eval_tasks() -> None:
    from lm_eval.tasks import TaskManager

    from rbln_eval.evaluation.datasets.spec import dataset_tasks

    builtin = dataset_tasks()
    assert sorted(builtin) == [
        "cls_cifar10", "cls_cifar100", "cls_cola", "cls_imagenet1k", "cls_mnli", "cls_speech_commands", "cls_sst2",
        "qa_squad", "qa_squad_v2",
    ]
    assert not set(builtin) & set(TaskManager().all_tasks)
    assert {task.kind for task in builtin.values()} == {"image-classification", "audio-classification", "text-classification", "question-answering"}


def test_a_sweep_mixing_a_causal_lm_and_a_classifier_makes_one_summary_and_report(scratch: Path, tasks: Path, bundles: dict) -> None:
    import json

    import yaml
    from lmhelpers import MODEL_DIRS, TASKS_DIR

    plan = scratch / "plan.yaml"
    plan.write_text(yaml.safe_dump({
        "models": [
            {"model": str(tiny_image_classifier(str(scratch / "models"), "vit")), "name": "vit", "batch_size": BATCH},
            {"model": str(MODEL_DIRS["causal"]), "name": "llama", "batch_size": 2},
        ],
        "tasks": [{"task": "cls_shapes", "include_path": str(tasks)}, {"task": "demo_mc", "limit": 2, "include_path": TASKS_DIR}],
    }))
    output = scratch / "sweep"
    result = ok(cli("sweep", str(plan), "--store", str(scratch / "store"), "--output", str(output)))
    summary = json.loads((output / "summary.json").read_text())
    cells = {(c["model"], c["task"]): c for c in summary["cells"]}
    assert sorted(cells) == [("llama", "demo_mc"), ("vit", "cls_shapes")]  # the pairs of the other kind are left out
    assert all(c["status"] == "scored" for c in cells.values())
    assert "top1,none" in cells["vit", "cls_shapes"]["metrics"] and "acc,none" in cells["llama", "demo_mc"]["metrics"]
    assert "| vit | top1 " in result.stdout and "| llama | - | acc " in result.stdout
    assert (output / "report.html").is_file()


def test_compare_reports_logit_deltas_and_agreement_against_the_float32_model(scratch: Path, tasks: Path, bundles: dict) -> None:
    out = scratch / "compare.json"
    bundle = bundles["resnet", BATCH]
    common = ["--store", str(scratch / "store"), "--include_path", str(tasks)]
    ran = ok(cli("compare", bundle.digest[:12], "--tasks", "cls_shapes", "--tolerance", "1e-4", "--output", str(out), *common))
    assert "max |Δlogit|" in ran.stdout and "same pred" in ran.stdout
    report = json.loads(out.read_text())
    assert report["passed"] and report["reference"]["model"] == "transformers" and report["reference"]["dtype"] == "float32"
    (task,) = report["tasks"]
    assert task["task"] == "cls_shapes" and task["samples"] == EXAMPLES and task["argmax_agreement"] == 1.0
    assert task["max_abs_output_delta"] <= 1e-4 and {m["metric"] for m in task["metrics"]} == {"top1", "top5", "macro_f1", "mcc"}
    assert all(m["delta"] == 0 for m in task["metrics"])
    mixed = cli("compare", bundle.digest[:12], "--tasks", "cls_shapes,arc_easy", *common)
    one_line_exit_2(mixed, "--tasks mixes dataset tasks (cls_shapes) with lm_eval tasks (arc_easy)")
