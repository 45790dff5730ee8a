"""A tiny Qwen2-VL bundle on the simulator: logits within 1e-4 of transformers at every prefill and decode
position (M-RoPE positions, per-row offsets) and identical greedy tokens, batch 1 and two rows of batch 2."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from rbln_eval.families.registry import family_of
from rbln_eval.api import CompileOptions
from rbln_eval.core.programs import Open, Step, run_programs, with_media
from rbln_eval.core.work import Media
from rbln_eval.families.causal.programs import causal_greedy_program
from rbln_eval.execution.loader import load_bundle
from rbln_eval.families.vision_language.backend import MultimodalRopeBackend
from rbln_eval.store import Store
from rbln_eval.build.workflow import compile_bundle, plan_compile
from vlmmodels import qwen_inputs, tiny_qwen2_vl

PROMPTS = [("<image> The picture shows", 5), ("Look at this: <image>\nIt is a", 6)]
NEW_TOKENS = 8
VISUAL = {"visual": {"max_seq_len": 16}}  # patches per image (one graph of the vision tower)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import Qwen2VLForConditionalGeneration

    model_dir = tiny_qwen2_vl(str(tmp_path_factory.mktemp("qwen-models")))
    store = Store(tmp_path_factory.mktemp("qwen-store"))
    bundles = {
        batch: compile_bundle(plan_compile(str(model_dir), CompileOptions(batch_size=batch, extra=VISUAL), npu="RBLN-CA25"), store).bundle
        for batch in (1, 2)
    }
    hf = Qwen2VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = [qwen_inputs(model_dir, text, seed) for text, seed in PROMPTS]
    with torch.no_grad():
        greedy = [hf.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist() for enc in inputs]
        reference = []
        for seq, enc in zip(greedy, inputs):
            ids = torch.tensor([seq])
            mm = (ids == hf.config.image_token_id).int()
            full = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": mm,
                    "pixel_values": enc["pixel_values"], "image_grid_thw": enc["image_grid_thw"]}
            reference.append(hf(**full).logits[0])
    return {"bundles": bundles, "inputs": inputs, "greedy": greedy, "reference": reference}


def test_bundle_is_keyed_and_holds_no_pickle(setup: dict[str, Any]) -> None:
    bundle = setup["bundles"][1]
    assert bundle.key.model_class == "image-text-to-text"
    assert bundle.key.compile["visual"] == {"max_seq_len": 16}
    assert bundle.key.compile["image"]["spatial_merge_size"] == 2
    names = set(bundle.manifest.files)
    assert {"torch_artifacts.safetensors", "visual/torch_artifacts.safetensors", "preprocessor_config.json"} <= names
    assert not [n for n in names if n.endswith(".pth")]


def _teacher_forced(sequence: list[int], prompt_length: int, out: list[torch.Tensor]):
    prefill = yield Open(sequence[:prompt_length])
    out.extend(prefill)
    for position in range(prompt_length, len(sequence)):
        out.append((yield Step(sequence[position], position)))
    return None


@pytest.mark.parametrize("batch", [1, 2])
def test_logits_and_greedy_tokens_match_transformers(setup: dict[str, Any], batch: int) -> None:
    loaded = load_bundle(setup["bundles"][batch])
    backend = family_of(loaded.model_class).backend(loaded.model)
    assert isinstance(backend, MultimodalRopeBackend) and backend.batch_size == batch
    images = [{k: enc[k] for k in ("pixel_values", "image_grid_thw")} for enc in setup["inputs"]]
    collected: list[list[torch.Tensor]] = [[] for _ in PROMPTS]
    programs = [
        with_media(_teacher_forced(setup["greedy"][i], enc["input_ids"].shape[1], collected[i]), Media(images[i], 1, ""))
        for i, enc in enumerate(setup["inputs"])
    ]
    run_programs(backend, programs)
    worst = max(float((torch.stack(mine) - ref).abs().max()) for mine, ref in zip(collected, setup["reference"]))
    print(f"qwen2_vl batch {batch}: max |logit delta| {worst:.2e}")
    assert worst <= 1e-4, worst
    programs = [
        with_media(causal_greedy_program(backend, enc["input_ids"][0].tolist(), NEW_TOKENS, lambda t: False, frozenset()), Media(images[i], 1, ""))
        for i, enc in enumerate(setup["inputs"])
    ]
    for mine, enc, ref in zip(run_programs(backend, programs), setup["inputs"], setup["greedy"]):
        assert mine == ref[enc["input_ids"].shape[1] :]


def test_compile_without_patches_per_image_is_refused_before_compiling(tmp_path) -> None:
    from rbln_eval.errors import ConfigError

    model_dir = tiny_qwen2_vl(str(tmp_path))
    with pytest.raises(ConfigError, match=r"qwen2_vl needs its vision tower's patches per image at compile time: pass --rbln-config"):
        plan_compile(str(model_dir), CompileOptions(batch_size=1), npu="RBLN-CA25")
