"""Few-shot multiple choice on a full-logit bundle: a question's shared context is prefilled once, each choice
from the context's last chunk boundary on top of the row's cached prefix; with partial evaluation (Winogrande:
the contexts differ from the blank on) the contexts' common whole chunks are prefilled once, each request from
their end.

On the demo model with a 1,536-token compiled length (the 25-shot ``demo_mc`` contexts are 1,000-1,250 tokens,
9-10 chunks of 128): scores within 1e-4 of lm_eval's ``hf`` model (accuracy identical) at 0, 5 and 25 shots,
batch 1 and 4 and two data-parallel replicas; identical to the previous schedule (the whole context once per
choice); at most ceil(context / chunk) + choices prefill calls per question. The local Winogrande-style task
(``tests/data/wino``, lm_eval's own Winogrande prompt functions) at 0 and 5 shots: the same, and one prefill
call fewer per question at 5 shots.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from demomodels import model_dirs
from lmhelpers import TASKS_DIR, sample_values
from rbln_eval.api import CompileOptions, open_lm
from rbln_eval.build.workflow import compile_bundle, plan_compile
from rbln_eval.store import Bundle, Store

TASK = "demo_mc"
WINO = "wino_local"  # lm_eval's Winogrande prompts (partial evaluation) over tests/data/wino
WINO_DIR = str(Path(__file__).resolve().parent / "data" / "wino")
MAX_LENGTH = 1536
LIMITS = {0: 4, 5: 3, 25: 2}  # documents per few-shot setting: the 25-shot ones are long


def evaluate(model: Any, shots: int, task: str = TASK) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=model, tasks=[task], limit=LIMITS[shots] if task == TASK else None, num_fewshot=shots,
        log_samples=True, task_manager=TaskManager(include_path=[TASKS_DIR, WINO_DIR], include_defaults=False),
    )


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fewshot")


@pytest.fixture(scope="module")
def long_model(scratch: Path) -> Path:
    """The demo causal model with room for 25-shot prompts (its rotary positions work at any length)."""
    target = scratch / "llama-long"
    shutil.copytree(model_dirs(str(scratch / "models"))["causal"], target)
    config = json.loads((target / "config.json").read_text())
    config["max_position_embeddings"] = MAX_LENGTH
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


@pytest.fixture(scope="module")
def bundles(scratch: Path, long_model: Path) -> dict[int, Bundle]:
    store = Store(scratch / "store")
    return {
        batch: compile_bundle(plan_compile(str(long_model), CompileOptions(batch_size=batch)), store).bundle
        for batch in (1, 4)
    }


@pytest.fixture(scope="module")
def runs(bundles: dict[int, Bundle]) -> Any:
    """``run(batch, shots, data_parallel=1, shared=True, task=TASK)``: results, device counters and the context
    lengths of the questions (in tokens, their first choice's), each computed once per module."""
    cache: dict[tuple[int, int, int, bool, str], dict[str, Any]] = {}

    def run(batch: int, shots: int, data_parallel: int = 1, shared: bool = True, task: str = TASK) -> dict[str, Any]:
        key = (batch, shots, data_parallel, shared, task)
        if key not in cache:
            with open_lm(bundles[batch], data_parallel=data_parallel) as lm:
                lm.share_context_chunks = shared
                results = evaluate(lm, shots, task)
                samples = sorted(results["samples"][task], key=lambda s: s["doc_id"])
                contexts = [len(lm._encode_pair(s["arguments"][0][0], s["arguments"][0][1])[0]) for s in samples]
            cache[key] = {
                "results": results,
                "prefill": results["config"]["rbln"]["device_counters"]["prefill"],
                "contexts": contexts,
                "choices": [len(s["arguments"]) for s in samples],
            }
        return cache[key]

    return run


@pytest.fixture(scope="module")
def reference(long_model: Path) -> Any:
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(long_model), backend="causal", dtype="float32", device="cpu", batch_size=4)
    cache: dict[tuple[int, str], dict[str, Any]] = {}

    def get(shots: int, task: str = TASK) -> dict[str, Any]:
        if (shots, task) not in cache:
            cache[shots, task] = evaluate(hf, shots, task)
        return cache[shots, task]

    return get


def assert_same_scores(ours: dict[str, Any], ref: dict[str, Any], task: str = TASK) -> None:
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"][task].get(metric) == ref["results"][task].get(metric), metric
    mine, theirs = sample_values(ours)[task], sample_values(ref)[task]
    assert len(mine) == len(theirs) > 0
    for a, b in zip(mine, theirs):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert abs(x[0] - y[0]) <= 1e-4 and bool(x[1]) == bool(y[1]), (x, y)


@pytest.mark.parametrize("shots", [0, 5, 25])
@pytest.mark.parametrize("batch", [1, 4])
def test_scores_match_hf(runs: Any, reference: Any, batch: int, shots: int) -> None:
    assert_same_scores(runs(batch, shots)["results"], reference(shots))


def test_25_shots_prefill_the_context_once_per_question(runs: Any) -> None:
    run = runs(4, 25)
    assert min(run["contexts"]) > 8 * 128  # the contexts are long: 9 chunks and more
    bound = sum(math.ceil(n / 128) + k for n, k in zip(run["contexts"], run["choices"]))
    assert run["prefill"]["calls"] <= bound
    # the previous schedule prefilled each context once per choice
    assert run["prefill"]["calls"] < sum(k * math.ceil(n / 128) for n, k in zip(run["contexts"], run["choices"]))


@pytest.mark.parametrize("shots", [0, 5])
def test_scores_identical_to_the_whole_context_per_choice_schedule(runs: Any, shots: int) -> None:
    shared, before = runs(4, shots), runs(4, shots, shared=False)
    assert sample_values(shared["results"]) == sample_values(before["results"])
    if shots == 0:  # contexts shorter than a chunk: nothing to share, nothing more done
        assert shared["prefill"] == before["prefill"]
    else:
        assert shared["prefill"]["calls"] < before["prefill"]["calls"]
        assert shared["prefill"]["tokens"] < before["prefill"]["tokens"]


def test_two_replicas_score_and_count_the_same(runs: Any) -> None:
    one, two = runs(4, 25), runs(4, 25, data_parallel=2)
    assert two["results"]["config"]["rbln"]["data_parallel"] == 2
    assert sample_values(two["results"]) == sample_values(one["results"])
    assert two["prefill"] == one["prefill"]  # a question's choices stay on one replica


# --------------------------------------------------------------------------------------------------
# Partial evaluation (Winogrande): the two contexts of a question share the few-shot examples and the
# sentence up to the blank; the continuation (the rest of the sentence) is the same.
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shots", [0, 5])
@pytest.mark.parametrize("batch", [1, 4])
def test_partial_evaluation_scores_match_hf(runs: Any, reference: Any, batch: int, shots: int) -> None:
    run = runs(batch, shots, task=WINO)
    assert_same_scores(run["results"], reference(shots, WINO), WINO)
    assert run["choices"] == [2] * 12
    if shots == 5:  # the common prefix holds whole chunks
        assert min(run["contexts"]) > 128


@pytest.mark.parametrize("shots", [0, 5])
def test_partial_evaluation_identical_to_the_whole_context_per_choice_schedule(runs: Any, shots: int) -> None:
    shared, before = runs(4, shots, task=WINO), runs(4, shots, shared=False, task=WINO)
    assert sample_values(shared["results"]) == sample_values(before["results"])
    if shots == 0:  # contexts shorter than a chunk: nothing to share, nothing more done
        assert shared["prefill"] == before["prefill"]
    else:  # a question's common whole chunks (its contexts are 1-2 chunks long) once instead of once per choice
        saved = sum(n // 128 for n in shared["contexts"])
        assert saved == 12
        assert shared["prefill"]["calls"] == before["prefill"]["calls"] - saved
        assert shared["prefill"]["tokens"] == before["prefill"]["tokens"] - saved * 128


def test_partial_evaluation_on_two_replicas_scores_and_counts_the_same(runs: Any) -> None:
    one, two = runs(4, 5, task=WINO), runs(4, 5, data_parallel=2, task=WINO)
    assert two["results"]["config"]["rbln"]["data_parallel"] == 2
    assert sample_values(two["results"]) == sample_values(one["results"])
    assert two["prefill"] == one["prefill"]  # a question's requests stay on one replica
