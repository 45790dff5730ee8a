"""A family the package does not ship, registered from outside: detected, compiled into the store and scored
with no change to rbln_eval — and scored exactly like the built-in causal family it reuses."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmhelpers import MODEL_DIRS, TASKS_DIR, sample_values, shared_bundle
from rbln_eval.api import CompileOptions, open_lm
from rbln_eval.build.workflow import compile_bundle, plan_compile
from rbln_eval.families.causal import CausalFamily
from rbln_eval.families.registry import detect_family, family_of, register, unregister
from rbln_eval.store import Bundle, Store

TASKS = ["demo_cloze", "demo_ppl", "demo_gen"]
LIMIT = 4


class ToyCausalFamily(CausalFamily):
    """Causal LMs whose config carries ``toy_marker``: the causal programs, under a name of their own."""

    name = "toy-causal"
    priority = 10  # asked before the causal family, whose models it would otherwise be

    def matches(self, model_config: Any) -> bool:
        return bool(getattr(model_config, "toy_marker", False)) and super().matches(model_config)


@pytest.fixture
def toy_family() -> Iterator[ToyCausalFamily]:
    family = register(ToyCausalFamily())
    yield family
    unregister(family.name)


@pytest.fixture
def toy_model(tmp_path: Path) -> Path:
    """The demo llama's weights and tokenizer, with ``toy_marker`` in its config."""
    directory = tmp_path / "toy-llama"
    shutil.copytree(MODEL_DIRS["causal"], directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["toy_marker"] = True
    config_path.write_text(json.dumps(config, indent=2))
    return directory


def evaluate(bundle: Bundle) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """lm_eval's results for ``bundle`` through :func:`open_lm`, and the device work they took."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=TASKS_DIR, include_defaults=False)
    with open_lm(bundle) as lm:
        results = simple_evaluate(model=lm, tasks=TASKS, limit=LIMIT, log_samples=True, task_manager=manager)
        return results, lm.device_counters


def test_a_registered_family_is_detected_compiled_and_scored(
    toy_family: ToyCausalFamily, toy_model: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    options = CompileOptions(batch_size=2)
    assert plan_compile(str(MODEL_DIRS["causal"]), options).model_class == "causal"  # unmarked: still causal
    request = plan_compile(str(toy_model), options)
    assert request.model_class == "toy-causal"
    assert family_of("toy-causal") is toy_family

    store = Store(tmp_path / "store")
    built = compile_bundle(request, store)
    assert built.built
    toy = built.bundle
    assert toy.key.model_class == "toy-causal"
    assert store.lookup(toy.digest) is not None

    reference = shared_bundle(tmp_path_factory)  # the same weights, compiled by the causal family
    assert reference.key.model_class == "causal"
    assert reference.key.compile == toy.key.compile
    assert reference.digest != toy.digest

    toy_results, toy_counters = evaluate(toy)
    causal_results, causal_counters = evaluate(reference)
    assert toy_results["config"]["rbln"]["key"]["model_class"] == "toy-causal"
    assert set(toy_results["results"]) == set(TASKS)
    assert toy_results["results"] == causal_results["results"]
    assert sample_values(toy_results) == sample_values(causal_results)
    assert set(toy_counters) == {"prefill", "decode"} and toy_counters == causal_counters


def test_an_unregistered_family_is_neither_detected_nor_opened(toy_model: Path, tmp_path: Path) -> None:
    family = register(ToyCausalFamily())
    try:
        bundle = compile_bundle(plan_compile(str(toy_model), CompileOptions(batch_size=2)), Store(tmp_path / "store")).bundle
    finally:
        unregister(family.name)
    from transformers import AutoConfig

    assert detect_family(AutoConfig.from_pretrained(toy_model)).name == "causal"
    assert plan_compile(str(toy_model), CompileOptions(batch_size=2)).model_class == "causal"
    with pytest.raises(ValueError, match=r"^unknown model class 'toy-causal'; known: causal, "):
        open_lm(bundle)
