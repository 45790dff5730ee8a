"""The `rbln` model scores the embedded demo tasks exactly like lm_eval's `hf` model, on the simulator.

Accuracy and exact match identical, perplexities within 1e-4 relative, every logged sample's log-prob
within 1e-4, identical generations — for the causal and seq2seq demo models, full-logit and last-logit
bundles, compiled batch sizes 1 and 4.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from lmhelpers import MODEL_DIRS, TASKS_DIR, demo_bundle, sample_values
from rbln_eval.lm import RBLNLM

LIMIT = 12
TASKS = ["demo_cloze", "demo_mc", "demo_ppl", "demo_gen"]
EXACT_METRICS = ("acc", "acc_norm", "exact_match")
RELATIVE_METRICS = ("perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte")


def evaluate(model: Any) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=model, tasks=TASKS, limit=LIMIT, log_samples=True,
        task_manager=TaskManager(include_path=TASKS_DIR, include_defaults=False),
    )


@pytest.fixture(scope="module")
def store_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("parity-store"))


@pytest.fixture(scope="module")
def reference() -> Any:
    from lm_eval.models.huggingface import HFLM

    cache: dict[str, dict[str, Any]] = {}

    def get(model_class: str) -> dict[str, Any]:
        if model_class not in cache:
            # hf's seq2seq generation length depends on its batch's padded context length: batch 1 is exact
            hf = HFLM(
                pretrained=str(MODEL_DIRS[model_class]), backend=model_class, dtype="float32", device="cpu",
                batch_size=4 if model_class == "causal" else 1,
            )
            cache[model_class] = evaluate(hf)
        return cache[model_class]

    return get


def assert_same_scores(ours: dict[str, Any], ref: dict[str, Any]) -> None:
    for task in TASKS:
        mine, theirs = ours["results"][task], ref["results"][task]
        for key, value in theirs.items():
            metric = key.split(",")[0]
            if metric in EXACT_METRICS:
                assert mine[key] == value, (task, key)
            elif metric in RELATIVE_METRICS:
                assert math.isclose(mine[key], value, rel_tol=1e-4), (task, key, mine[key], value)
    mine_samples, ref_samples = sample_values(ours), sample_values(ref)
    for task in TASKS:
        assert len(mine_samples[task]) == len(ref_samples[task]) == LIMIT
        for a, b in zip(mine_samples[task], ref_samples[task]):
            for x, y in zip(a, b):
                if isinstance(y, str):
                    assert x == y, task
                elif isinstance(y, (tuple, list)):
                    assert abs(x[0] - y[0]) <= 1e-4 and bool(x[1]) == bool(y[1]), (task, x, y)
                else:
                    assert abs(x - y) <= 1e-4 * max(1.0, abs(y)), (task, x, y)


@pytest.mark.parametrize(
    "model_class,batch_size,logits",
    [
        ("causal", 1, "all"),
        ("causal", 4, "all"),
        ("causal", 1, "last"),
        ("causal", 4, "last"),
        ("seq2seq", 1, "all"),
        ("seq2seq", 4, "all"),
    ],
)
def test_rbln_matches_hf(store_root: str, reference: Any, model_class: str, batch_size: int, logits: str) -> None:
    bundle = demo_bundle(store_root, model_class, batch_size, logits)
    assert bundle.key.compile["batch_size"] == batch_size
    if model_class == "causal":
        assert bundle.key.compile["logits_to_keep"] == (0 if logits == "all" else 1)
    lm = RBLNLM(artifact=bundle.digest, store=store_root)
    ours = evaluate(lm)
    assert_same_scores(ours, reference(model_class))
    info = ours["config"]["rbln"]
    assert info["bundle_digest"] == bundle.digest and info["key"] == bundle.key.fields()
    assert info["requests"] > 0 and info["device_counters"]
    # the simulated device counted exactly the calls and padded tokens the adapter reports
    for field in ("calls", "tokens"):
        assert sum(c[field] for c in info["simulator_counters"].values()) == sum(
            c[field] for c in info["device_counters"].values()
        )
