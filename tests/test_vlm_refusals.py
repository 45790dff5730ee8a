"""LLaVA and LLaVA-NeXT bundles that optimum-rbln would compile but could not run are refused at compile time.

optimum-rbln's ``RBLNLlavaForConditionalGeneration.get_image_features`` and
``RBLNLlavaNextForConditionalGeneration.get_image_features`` (per anyres tile) size their run-time buffers from
the model's config alone: the vision output as the patches plus a CLS position, the projector's output as the
patches only, while ``_update_rbln_config`` compiles the projector for the patches plus CLS under the "full"
strategy. A CLIP tower with the "full" strategy, and a SigLIP tower (no CLS), therefore fail on their first
image whatever rbln_config is passed. The LLaVA-NeXT models are the LLaVA ones with an image newline and anyres
tiles of the tower's image size (:func:`as_llava_next`). ``rbln-eval compile`` refuses both in one line before the store is
touched; compiled with optimum-rbln directly, each fails exactly where the refusal says, on graphs that are
themselves right. So are a BLIP-2 (given the config field optimum-rbln reads and transformers does not define, it
compiles, but its bundle would hold a pickle optimum-rbln loads it with), an architecture ``rbln-vlm`` does not score
and a Pixtral LLaVA with the "default" strategy; a bundle with a tower ``rbln-vlm`` does not score is refused when it
is opened.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

import rbln_eval.sim as sim
from conftest import tree_snapshot
from rbln_eval.api import CompileOptions
from rbln_eval.build.workflow import plan_compile
from rbln_eval.families.vision_language.compile import export_config, qformer_settings, text_submodule, vlm_rbln_config
from rbln_eval.families.vision_language.processors import load_processor
from lmhelpers import cli_in_process
from remotehelpers import one_line_exit_2
from vlmmodels import CHAT_TEMPLATE, make_image, tiny_llava, tiny_llava_siglip

sim.activate()


def cli(*args: str) -> subprocess.CompletedProcess:
    """``rbln-eval ARGS`` in this process (on the simulator): its exit status and output."""
    code, out, err = cli_in_process(*args)
    return subprocess.CompletedProcess(["rbln-eval", *args], code, out, err)

LLAVA_BUFFERS = "optimum/rbln/transformers/models/llava/modeling_llava.py:get_image_features"
LLAVA_NEXT_BUFFERS = "optimum/rbln/transformers/models/llava_next/modeling_llava_next.py:get_image_features"


def as_llava_next(llava_dir: Path) -> Path:
    """The LLaVA saved at ``llava_dir`` as a LLaVA-NeXT: the same tower, projector and language model, a seeded
    image newline, and a processor tiling images (anyres) into tiles of the tower's image size."""
    from transformers import (
        AutoTokenizer,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    out = llava_dir.with_name(llava_dir.name.replace("tiny-llava", "tiny-llava-next", 1))
    if (out / "config.json").is_file():
        return out
    llava = LlavaForConditionalGeneration.from_pretrained(llava_dir, dtype=torch.float32)
    config = llava.config
    size = config.vision_config.image_size
    grid = [[size, 2 * size], [2 * size, size], [2 * size, 2 * size]]
    next_config = LlavaNextConfig(
        vision_config=config.vision_config, text_config=config.text_config, image_token_index=config.image_token_index,
        vision_feature_select_strategy=config.vision_feature_select_strategy, vision_feature_layer=-1,
        image_grid_pinpoints=grid, image_seq_length=config.image_seq_length, projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(next_config).eval()
    loaded = model.load_state_dict(llava.state_dict(), strict=False)
    assert loaded.missing_keys == ["model.image_newline"] and not loaded.unexpected_keys, loaded
    model.save_pretrained(out)
    tower_cls = config.vision_config.model_type == "clip_vision_model"
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}, image_grid_pinpoints=grid,
        ),
        tokenizer=AutoTokenizer.from_pretrained(llava_dir), patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1 if tower_cls else 0, chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


def clip_full(root: str) -> Path:
    return tiny_llava(root, strategy="full", image_size=48, patch=16)


def full_strategy_refusal(buffers: str) -> str:
    return (
        "error: vision_feature_select_strategy='full' with a CLIP tower: optimum-rbln 0.12.0 compiles the projector "
        f"for 9 patches + CLS but sizes its output for the 9 patches only ({buffers}), so the CLS position does "
        "not fit: use a checkpoint with the 'default' strategy"
    )


def siglip_refusal(model: str, buffers: str) -> str:
    return (
        f"error: a {model} with a SigLIP vision tower (siglip_vision_model): optimum-rbln 0.12.0 sizes the vision "
        f"output for 16 patches + a CLS position ({buffers}), one more than the 16 positions a SigLIP tower outputs, "
        "so the bundle would fail on its first image: use a checkpoint with a CLIP vision tower"
    )


CLIP_FULL_FAILURE = "out buffer shape [1, 9, 128] does not match output [1, 10, 128]"
SIGLIP_FAILURE = "out buffer shape [1, 17, 32] does not match output [1, 16, 32]"
SIGLIP_PROJECTOR_FAILURE = "input 'image_features' of 'compiled_model' has shape [1, 16, 32], compiled for [1, 17, 32]"

#: name: (model builder, the refusal, the run-time failure, the projector's failure on the tower's output)
CASES: dict[str, tuple[Callable[[str], Path], str, str, str | None]] = {
    "clip-full": (clip_full, full_strategy_refusal(LLAVA_BUFFERS), CLIP_FULL_FAILURE, None),
    "siglip": (tiny_llava_siglip, siglip_refusal("LLaVA", LLAVA_BUFFERS), SIGLIP_FAILURE, SIGLIP_PROJECTOR_FAILURE),
    "next-clip-full": (
        lambda root: as_llava_next(clip_full(root)), full_strategy_refusal(LLAVA_NEXT_BUFFERS), CLIP_FULL_FAILURE, None,
    ),
    "next-siglip": (
        lambda root: as_llava_next(tiny_llava_siglip(root)), siglip_refusal("LLaVA-NeXT", LLAVA_NEXT_BUFFERS),
        SIGLIP_FAILURE, SIGLIP_PROJECTOR_FAILURE,
    ),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = str(tmp_path_factory.mktemp("vlm-refused"))
    return {name: build(root) for name, (build, *_) in CASES.items()}


def everything(root: Path) -> tuple[dict[str, bytes], list[str]]:
    """Every file with its bytes, and every directory, under ``root``."""
    return tree_snapshot(root), sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())


@pytest.mark.parametrize("case", list(CASES))
def test_compile_refuses_in_one_line_and_stores_nothing(models: dict[str, Path], case: str, tmp_path: Path) -> None:
    existing = tmp_path / "store"
    (existing / "bundles").mkdir(parents=True)
    (existing / "refs").mkdir()
    (existing / "refs" / "keep").write_text("an earlier reference\n")
    before = everything(existing)
    fresh = tmp_path / "fresh-store"
    for store in (existing, fresh):
        result = cli("compile", str(models[case]), "--npu", "RBLN-CA25", "--store", str(store))
        line = one_line_exit_2(result, CASES[case][1])
        assert line == CASES[case][1]
        assert result.stdout == ""
    assert everything(existing) == before
    assert not fresh.exists()


def test_the_default_strategy_of_the_same_tower_still_plans(tmp_path: Path) -> None:
    model_dir = tiny_llava(str(tmp_path), strategy="default", image_size=48, patch=16)
    request = plan_compile(str(model_dir), CompileOptions(batch_size=1), npu="RBLN-CA25")
    image = request.key.compile["image"]
    expected = {
        "model_type": "clip_vision_model", "image_size": 48, "patch_size": 16,
        "vision_feature_select_strategy": "default", "image_seq_length": 9,
    }
    assert {name: image[name] for name in expected} == expected


@pytest.mark.parametrize("case", list(CASES))
def test_optimum_rbln_itself_fails_where_the_refusal_says(models: dict[str, Path], case: str, tmp_path: Path) -> None:
    """Compiled by optimum-rbln with the rbln_config rbln-eval would pass: right graphs, wrong run-time buffers."""
    from optimum.rbln import RBLNAutoModelForImageTextToText
    from transformers import AutoConfig, AutoModelForImageTextToText

    model_dir = models[case]
    _, _, run_failure, projector_failure = CASES[case]
    config = AutoConfig.from_pretrained(model_dir)
    rbln_config: dict[str, Any] = {
        **vlm_rbln_config(CompileOptions(batch_size=1, max_seq_len=64), text_submodule(config)), "npu": "RBLN-CA25",
    }
    model = RBLNAutoModelForImageTextToText.from_pretrained(
        str(model_dir), export=True, rbln_config=rbln_config, model_save_dir=str(tmp_path / "bundle")
    )
    hf = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    inputs = load_processor(model_dir, config.model_type)(images=[make_image(3)], text=["<image>"], return_tensors="pt")
    pixels = inputs["pixel_values"]
    sizes = {"image_sizes": inputs["image_sizes"]} if "image_sizes" in inputs else {}  # LLaVA-NeXT: its anyres tiles
    with torch.no_grad():
        with pytest.raises(ValueError) as failure:
            model.get_image_features(
                pixel_values=pixels, vision_feature_layer=-1,
                vision_feature_select_strategy=config.vision_feature_select_strategy, **sizes,
            )
        assert str(failure.value) == run_failure
        # the vision graph gives transformers' positions exactly (of one image or tile: it is compiled for one)
        tile = pixels.flatten(0, -4)[:1]
        selected = hf.model.vision_tower(tile, output_hidden_states=True).hidden_states[-1]
        compiled = model.rbln_submodules[0](tile, output_hidden_states=True).hidden_states[-1]
        assert compiled.shape == selected.shape and torch.equal(compiled, selected)
        projector = model.model[0]  # compiled for the patches + CLS ("full")
        if projector_failure is None:
            assert torch.equal(projector(compiled), hf.model.multi_modal_projector(selected))
        else:
            with pytest.raises(ValueError) as failure:
                projector(compiled)
            assert str(failure.value) == projector_failure


def test_optimum_rbln_compiles_a_blip2_only_with_the_config_rbln_eval_completes(tmp_path: Path) -> None:
    """transformers' BLIP-2 vision config has no ``num_channels``, which optimum-rbln reads to shape the tower's input:
    alone it fails; given the architecture's 3 (:func:`export_config`) and the Q-Former compiled for the tower's
    patches, it compiles, and both pickles it writes become safetensors."""
    from optimum.rbln import RBLNAutoModelForImageTextToText
    from transformers import AutoConfig

    from rbln_eval.store.tensors import convert_pickles
    from vlmmodels_more import tiny_blip2

    model_dir = tiny_blip2(str(tmp_path))
    config = AutoConfig.from_pretrained(model_dir)
    rbln_config = {**vlm_rbln_config(CompileOptions(batch_size=1, max_seq_len=64), text_submodule(config)), "npu": "RBLN-CA25"}
    qformer_settings(rbln_config, config)
    assert rbln_config["qformer"] == {"image_text_hidden_size": 16} and config.image_text_hidden_size == 256
    bundle = tmp_path / "bundle"
    with pytest.raises(AttributeError, match="'Blip2VisionConfig' object has no attribute 'num_channels'"):
        RBLNAutoModelForImageTextToText.from_pretrained(str(model_dir), export=True, rbln_config=rbln_config, model_save_dir=str(bundle))
    completed = export_config(config)
    assert completed is config and config.vision_config.num_channels == 3 and export_config(config) is None
    RBLNAutoModelForImageTextToText.from_pretrained(
        str(model_dir), export=True, config=completed, rbln_config=rbln_config, model_save_dir=str(bundle)
    )
    assert convert_pickles(bundle) == ["language_model/torch_artifacts.pth", "query_tokens.pth"]
    assert list(bundle.rglob("*.pth")) == []


def with_config(model_dir: Path, out: Path, **changes: Any) -> Path:
    """A copy of ``model_dir`` whose ``config.json`` has ``changes`` (``vision_config.field`` for the tower's)."""
    shutil.copytree(model_dir, out)
    config = json.loads((out / "config.json").read_text())
    for name, value in changes.items():
        part, _, field = name.rpartition("__")
        (config[part] if part else config)[field] = value
    (out / "config.json").write_text(json.dumps(config))
    return out


def test_an_architecture_rbln_vlm_does_not_score_is_refused_at_compile(tmp_path: Path) -> None:
    """A Qwen3-VL-MoE (optimum-rbln compiles it; its config is all compile reads) would compile, then be refused at
    scoring: compile refuses it."""
    from transformers import Qwen3VLMoeConfig

    from rbln_eval.families.vision_language.compile import SCORED_VLM_TYPES, supported_vlm_types

    assert "qwen3_vl_moe" in set(supported_vlm_types()) - set(SCORED_VLM_TYPES)
    model_dir = tmp_path / "qwen3-vl-moe"
    Qwen3VLMoeConfig().save_pretrained(model_dir)
    store = tmp_path / "store"
    result = cli("compile", str(model_dir), "--npu", "RBLN-CA25", "--store", str(store))
    line = one_line_exit_2(result, "error: qwen3_vl_moe: rbln-vlm scores llava, llava_next, ")
    assert line.endswith(
        "; a qwen3_vl_moe bundle would compile and load, then be refused at scoring: compile it with optimum-rbln "
        "directly to use it outside rbln-eval"
    )
    assert not store.exists()


def test_a_pixtral_llava_with_the_default_strategy_is_refused_at_compile(tmp_path: Path) -> None:
    """transformers drops the first feature of the tower under "default"; a Pixtral tower has no CLS to drop."""
    from vlmmodels_more import tiny_llava_pixtral

    model_dir = with_config(tiny_llava_pixtral(str(tmp_path)), tmp_path / "pixtral-default", vision_feature_select_strategy="default")
    store = tmp_path / "store"
    result = cli("compile", str(model_dir), "--npu", "RBLN-CA25", "--store", str(store))
    expected = (
        "error: vision_feature_select_strategy='default' with a pixtral tower: transformers 5.15.1 drops the first of the "
        "tower's features (transformers/models/llava/modeling_llava.py:LlavaModel.get_image_features), and a pixtral "
        "tower has no CLS position to drop, so the image features are one short of the processor's image tokens: use "
        "a checkpoint with the 'full' strategy (as Pixtral's own)"
    )
    assert one_line_exit_2(result, expected) == expected and not store.exists()


def test_rbln_vlm_refuses_a_stored_llava_whose_tower_it_does_not_score(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bundle compile refuses may still reach a store (another tool, an older rbln-eval): here compiled with the
    refusal switched off. Opening it as ``rbln-vlm`` refuses it by its tower, before any request."""
    import rbln_eval.families.vision_language.compile as vlm_compile
    from rbln_eval.api import open_lm
    from rbln_eval.build.workflow import compile_bundle
    from rbln_eval.errors import ConfigError
    from rbln_eval.store import Store

    monkeypatch.setattr(vlm_compile, "refuse_unrunnable", lambda config: None)
    request = plan_compile(str(models["siglip"]), CompileOptions(batch_size=1, max_seq_len=64), npu="RBLN-CA25")
    bundle = compile_bundle(request, Store(tmp_path / "store")).bundle
    assert bundle.key.compile["image"]["model_type"] == "siglip_vision_model"
    with pytest.raises(ConfigError) as refused:
        open_lm(bundle)
    assert str(refused.value).splitlines()[0] == (
        f"bundle {bundle.digest[:12]} is a llava with a siglip_vision_model vision tower; rbln-vlm scores a llava with "
        "clip_vision_model or pixtral towers only"
    )
