"""Audio classifiers (a tiny AST built locally) scored on a local dataset task of WAV clips.

Predictions equal transformers float32 on the same features, logits within 1e-4, metrics equal scikit-learn over
transformers' predictions, at batch 1 and a compiled batch with a ragged last batch; data-parallel workers agree;
labels that do not match the model's, or clips at another sampling rate, stop the run in one line before any device
work; a clip reads the same as an array, a path or file bytes.
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

from classifiermodels import AUDIO_LABELS, FRAMES, NUM_MEL_BINS, audio_tasks, tiny_audio_classifier  # noqa: E402
from speechmodels import SAMPLING_RATE  # noqa: E402
from rbln_eval.api import CompileOptions, evaluate_dataset_bundle, open_classifier  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402
from rbln_eval.errors import ConfigError, MultimodalRequestError  # noqa: E402
from rbln_eval.evaluation.evaluate import EvalOptions  # noqa: E402
from rbln_eval.store import Bundle, Store  # noqa: E402

BATCH = 4
EXAMPLES = 7  # over 4 rows: a ragged last batch
TASK = "cls_clips"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("audio-classification")


@pytest.fixture(scope="module")
def model(scratch: Path) -> Path:
    return tiny_audio_classifier(str(scratch / "models"))


@pytest.fixture(scope="module")
def tasks(scratch: Path) -> Path:
    return audio_tasks(str(scratch), EXAMPLES)


@pytest.fixture(scope="module")
def bundles(scratch: Path, model: Path) -> dict[int, Bundle]:
    store = Store(scratch / "store")
    return {batch: compile_bundle(plan_compile(str(model), CompileOptions(batch_size=batch)), store).bundle for batch in (1, BATCH)}


def evaluate(bundle: Bundle, tasks: Path, task: str = TASK, **placement: Any) -> dict[str, Any]:
    with open_classifier(bundle, **placement) as classifier:
        results = evaluate_dataset_bundle(classifier, EvalOptions(tasks=[task], include_path=str(tasks), log_samples=True))
        results["counters"] = classifier.info()["device_counters"]
    return results


def reference(model_dir: Path, tasks: Path) -> np.ndarray:
    """transformers float32 logits of every clip (read with soundfile), prepared by the same feature extractor."""
    import soundfile
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    extractor = AutoFeatureExtractor.from_pretrained(model_dir)
    classifier = AutoModelForAudioClassification.from_pretrained(model_dir).eval()
    rows = [json.loads(line) for line in (tasks / f"{TASK}.jsonl").read_text().splitlines()]
    clips = [soundfile.read(tasks / row["file"], dtype="float32")[0] for row in rows]
    with torch.no_grad():
        return classifier(**extractor(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt")).logits.numpy()


@pytest.mark.parametrize("batch", [1, BATCH])
def test_predictions_logits_and_metrics_equal_transformers(batch: int, bundles: dict, model: Path, tasks: Path) -> None:
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef, top_k_accuracy_score

    results = evaluate(bundles[batch], tasks)
    expected = reference(model, tasks)
    samples = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    for sample, logits in zip(samples, expected):
        ours = dict(sample["top_k"])  # the five highest of six labels
        assert len(ours) == 5 and set(ours) <= set(AUDIO_LABELS)
        assert max(abs(ours[label] - float(logits[AUDIO_LABELS.index(label)])) for label in ours) <= 1e-4
        assert sorted(ours, key=ours.get, reverse=True) == [AUDIO_LABELS[i] for i in np.argsort(-logits)[:5]]
    predicted = [AUDIO_LABELS[i] for i in expected.argmax(axis=1)]
    assert [s["prediction"] for s in samples] == predicted
    assert len(set(predicted)) > 3  # the clips are told apart
    truth = [s["target"] for s in samples]
    scores = results["results"][TASK]
    assert scores["top1,none"] == accuracy_score(truth, predicted)
    assert 0 < scores["top1,none"] < 1
    assert scores["macro_f1,none"] == pytest.approx(f1_score(truth, predicted, average="macro", labels=list(AUDIO_LABELS), zero_division=0))
    assert scores["mcc,none"] == pytest.approx(matthews_corrcoef(truth, predicted))
    truth_ids = [AUDIO_LABELS.index(t) for t in truth]
    assert scores["top5,none"] == pytest.approx(top_k_accuracy_score(truth_ids, expected, k=5, labels=range(len(AUDIO_LABELS))))
    assert results["n-samples"][TASK] == {"original": EXAMPLES, "effective": EXAMPLES}
    assert results["counters"] == {"model": {"calls": -(-EXAMPLES // batch), "tokens": -(-EXAMPLES // batch) * batch}}


def test_data_parallel_predicts_identically(bundles: dict, tasks: Path) -> None:
    one = evaluate(bundles[BATCH], tasks)
    two = evaluate(bundles[BATCH], tasks, data_parallel=2)
    assert two["config"]["rbln"]["workers"] and len(two["config"]["rbln"]["workers"]) == 2
    assert one["samples"] == two["samples"] and one["results"] == two["results"]


def test_labels_that_do_not_match_stop_before_any_device_work(bundles: dict, tasks: Path) -> None:
    with open_classifier(bundles[BATCH]) as classifier:
        with pytest.raises(ConfigError) as caught:
            evaluate_dataset_bundle(classifier, EvalOptions(tasks=["cls_clips_other"], include_path=str(tasks)))
        assert classifier.info()["device_counters"] == {}
    message = str(caught.value)
    assert "\n" not in message and message.startswith("task cls_clips_other: 3 of its 3 labels ('keyword 0', 'keyword 1', 'keyword 2'…)")
    assert "map them with label_map in the task YAML" in message


def test_clips_at_another_sampling_rate_are_refused_not_resampled(bundles: dict, tasks: Path) -> None:
    with open_classifier(bundles[1]) as classifier:  # the 8 kHz clip is the last, in the task's last chunk
        with pytest.raises(MultimodalRequestError) as caught:
            evaluate_dataset_bundle(classifier, EvalOptions(tasks=["cls_clips_8k"], include_path=str(tasks)))
        assert classifier.info()["device_counters"] == {}  # checked before the first chunk ran
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(
        f"task cls_clips_8k, example {EXAMPLES - 1}: an audio clip is sampled at 8000 Hz; the model's feature extractor "
        "expects 16000 Hz: resample"
    )


def test_the_key_holds_the_frames_and_mel_bins_and_max_seq_len_is_refused(bundles: dict, model: Path) -> None:
    compiled = bundles[BATCH].key.compile
    assert compiled["inputs"] == {"max_length": FRAMES, "num_mel_bins": NUM_MEL_BINS}
    info = json.loads((bundles[BATCH].path / "rbln_config.json").read_text())
    assert "inputs" not in info and info["_compile_cfgs"][0]["input_info"] == [["input_values", [BATCH, FRAMES, NUM_MEL_BINS], "float32"]]
    assert (bundles[BATCH].path / "preprocessor_config.json").is_file()
    with pytest.raises(ConfigError, match=f"its input is the model's {FRAMES} frames"):
        plan_compile(str(model), CompileOptions(max_seq_len=16))


def test_a_clip_reads_the_same_as_an_array_a_path_or_file_bytes(bundles: dict, tasks: Path) -> None:
    import soundfile
    from transformers import AutoConfig

    from rbln_eval.families.registry import detect_family, family_of

    family = family_of(bundles[BATCH].key.model_class)
    assert family.name == "audio-classification" and detect_family(AutoConfig.from_pretrained(bundles[BATCH].path)) is family
    extractor = family.load_preprocessor(bundles[BATCH].path)
    path = str(tasks / "clip3.wav")
    samples, rate = soundfile.read(path, dtype="float32")
    forms = [
        {"array": samples, "sampling_rate": rate}, path, {"path": None, "bytes": Path(path).read_bytes()}, {"path": path, "bytes": None},
    ]
    inputs = [family.example_inputs(extractor, {"clip": form}, {"audio": "clip"})["input_values"] for form in forms]
    assert inputs[0].shape == (FRAMES, NUM_MEL_BINS)
    assert all(torch.equal(inputs[0], other) for other in inputs[1:])
    with pytest.raises(MultimodalRequestError, match="without its sampling_rate"):
        family.example_inputs(extractor, {"clip": {"array": samples}}, {"audio": "clip"})

