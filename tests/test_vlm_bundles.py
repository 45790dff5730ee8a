"""Image-text-to-text bundles on the simulator: a tiny LLaVA (CLIP tower + the demo Llama) against transformers.

Compiled through rbln-eval's workflow (auto-detected class, key with image settings), the bundle holds no
pickle; loaded, its logits match transformers' within 1e-4 at every prefill and decode position and greedy
tokens are identical, for batch 1 and for two rows of the compiled batch 2 decoding together.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from rbln_eval.families.registry import family_of
from rbln_eval.api import CompileOptions
from rbln_eval.core.programs import Open, Step, run_programs, with_media
from rbln_eval.core.work import Media
from rbln_eval.families.causal.programs import causal_greedy_program
from rbln_eval.identity import diff_keys
from rbln_eval.execution.loader import IncompatibleBundleError, load_bundle
from rbln_eval.store import Bundle, Store
from rbln_eval.build.workflow import compile_bundle, plan_compile
from vlmmodels import make_image, tiny_llava

PROMPTS = [("<image> The picture shows", 1), ("USER: <image>\nWhat is the value of", 2)]
NEW_TOKENS = 8
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_dir = tiny_llava(str(tmp_path_factory.mktemp("vlm-models")))
    store = Store(tmp_path_factory.mktemp("vlm-store"))
    bundles = {}
    for batch in (1, 2):
        request = plan_compile(str(model_dir), CompileOptions(batch_size=batch), npu="RBLN-CA25")
        bundles[batch] = compile_bundle(request, store).bundle
    processor = AutoProcessor.from_pretrained(model_dir)
    hf = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    encodings = [processor(images=[make_image(seed)], text=[text], return_tensors="pt") for text, seed in PROMPTS]
    with torch.no_grad():
        greedy = [hf.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist() for enc in encodings]
        # transformers' logits at every position of prompt + greedy answer (the last one predicts nothing used)
        reference = [hf(input_ids=torch.tensor([seq]), pixel_values=enc["pixel_values"]).logits[0] for seq, enc in zip(greedy, encodings)]
    return {
        "model_dir": model_dir, "store": store, "bundles": bundles, "processor": processor, "hf": hf,
        "encodings": encodings, "greedy": greedy, "reference": reference,
    }


def test_compile_detects_the_class_and_keys_the_image_settings(setup: dict[str, Any], tmp_path: Path) -> None:
    from transformers import AutoConfig

    bundle = setup["bundles"][1]
    config = AutoConfig.from_pretrained(setup["model_dir"])
    assert bundle.key.model_class == "image-text-to-text"
    image = bundle.key.compile["image"]
    assert image["image_size"] == config.vision_config.image_size
    assert image["patch_size"] == config.vision_config.patch_size
    assert image["vision_feature_select_strategy"] == config.vision_feature_select_strategy
    assert bundle.key.compile["language_model"]["use_inputs_embeds"] is True
    # the alias names the language model's length and logits, as for text models
    length = config.text_config.max_position_embeddings
    assert bundle.manifest.info["alias"].endswith(f":bs1-all-len{length}-tp1")
    # A model that differs only in its image size gets another key, and explain names the image field.
    other = tmp_path / "bigger-images"
    shutil.copytree(setup["model_dir"], other)
    config.vision_config.image_size = 64
    config.save_pretrained(other)
    request = plan_compile(str(other), CompileOptions(batch_size=1), npu="RBLN-CA25")
    fields = {diff.field for diff in diff_keys(bundle.key, request.key)}
    assert "compile.image" in fields and request.key.compile["image"]["image_size"] == 64


def test_bundle_holds_tensors_not_pickles(setup: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    for bundle in setup["bundles"].values():
        names = list(bundle.manifest.files)
        assert not [n for n in names if n.endswith((".pth", ".pt", ".pkl", ".bin"))], names
        assert not list(bundle.path.rglob("*.pth"))
        assert {"processor_config.json", "chat_template.jinja", "vision_tower/compiled_model.rbln"} <= set(names)
        tensors = load_file(str(bundle.path / "language_model" / "torch_artifacts.safetensors"))
        assert list(tensors) == ["embed_tokens.weight"]
        assert torch.equal(tensors["embed_tokens.weight"], setup["hf"].get_input_embeddings().weight)


def _teacher_forced(backend: Any, sequence: list[int], prompt_length: int, out: list[torch.Tensor]):
    """Prefill the prompt, then feed the rest of ``sequence`` one decode step at a time, keeping every logit."""
    prefill = yield Open(sequence[:prompt_length])
    out.extend(prefill)
    for position in range(prompt_length, len(sequence)):
        logits = yield Step(sequence[position], position)
        out.append(logits)
    return None


@pytest.mark.parametrize("batch", [1, 2])
def test_logits_and_greedy_tokens_match_transformers(setup: dict[str, Any], batch: int) -> None:
    loaded = load_bundle(setup["bundles"][batch])
    backend = family_of(loaded.model_class).backend(loaded.model)
    assert backend.batch_size == batch
    collected: list[list[torch.Tensor]] = [[] for _ in PROMPTS]
    programs = []
    for i, enc in enumerate(setup["encodings"]):
        length = enc["input_ids"].shape[1]
        program = _teacher_forced(backend, setup["greedy"][i], length, collected[i])
        programs.append(with_media(program, Media({"pixel_values": enc["pixel_values"]}, 1, "")))
    run_programs(backend, programs)
    worst = 0.0
    for mine, ref in zip(collected, setup["reference"]):
        assert len(mine) == ref.shape[0]
        worst = max(worst, float((torch.stack(mine) - ref).abs().max()))
    print(f"llava batch {batch}: max |logit delta| {worst:.2e}")
    assert worst <= TOLERANCE, worst
    # with batch 2 both prompts share the decode graph: each row must give its own sample's greedy answer
    greedy = []
    programs = []
    for enc in setup["encodings"]:
        tokens = enc["input_ids"][0].tolist()
        program = causal_greedy_program(backend, tokens, NEW_TOKENS, lambda t: False, frozenset())
        programs.append(with_media(program, Media({"pixel_values": enc["pixel_values"]}, 1, "")))
    greedy = run_programs(backend, programs)
    for mine, enc, ref in zip(greedy, setup["encodings"], setup["greedy"]):
        assert mine == ref[enc["input_ids"].shape[1] :]
    assert backend.counters.as_dict()["vision"]["calls"] == 2 * len(PROMPTS)


def test_plain_optimum_rbln_load_after_rebuild(setup: dict[str, Any]) -> None:
    from optimum.rbln import RBLNAutoModelForImageTextToText

    from rbln_eval.store.tensors import prepare_load_dir

    bundle = setup["bundles"][1]
    view = prepare_load_dir(bundle)
    assert view != bundle.path and setup["store"].root not in view.parents
    assert (view / "language_model" / "torch_artifacts.pth").is_file()
    model = RBLNAutoModelForImageTextToText.from_pretrained(str(view), export=False)
    enc = setup["encodings"][0]
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)
    assert out[0].tolist() == setup["greedy"][0]
    assert setup["store"].verify(bundle) == []  # the rebuild wrote nothing into the store


def test_a_view_tampered_with_is_rebuilt(setup: dict[str, Any]) -> None:
    import hashlib

    from rbln_eval.store.tensors import prepare_load_dir

    bundle = setup["bundles"][1]
    view = prepare_load_dir(bundle)
    pickle = view / "language_model" / "torch_artifacts.pth"
    original = hashlib.sha256(pickle.read_bytes()).hexdigest()
    pickle.write_bytes(b"not the tensors this view was built from")
    assert prepare_load_dir(bundle) == view
    assert hashlib.sha256(pickle.read_bytes()).hexdigest() == original


def _copy_with(bundle: Bundle, store: Store, extra: dict[str, bytes]) -> Bundle:
    """A bundle of the same key in ``store`` whose manifest also lists ``extra`` files."""

    def build(ctx: Any) -> None:
        for name in bundle.manifest.files:
            if name == "rbln-eval-build.log":
                continue
            target = ctx.path / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(bundle.path / name, target)
        for name, data in extra.items():
            (ctx.path / name).write_bytes(data)

    return store.get_or_build(bundle.key, build).bundle


def test_bundles_holding_a_pickle_are_refused(setup: dict[str, Any], tmp_path: Path) -> None:
    bundle = setup["bundles"][1]
    buffer = io.BytesIO()
    torch.save({"embed_tokens": {"weight": torch.zeros(2, 2)}}, buffer)
    listed = _copy_with(bundle, Store(tmp_path / "listed"), {"language_model/torch_artifacts.pth": buffer.getvalue()})
    with pytest.raises(IncompatibleBundleError, match=r"contains pickled files \(language_model/torch_artifacts\.pth\)"):
        load_bundle(listed)
    dropped = _copy_with(bundle, Store(tmp_path / "dropped"), {})
    (dropped.path / "vision_tower" / "torch_artifacts.pth").write_bytes(buffer.getvalue())
    with pytest.raises(IncompatibleBundleError, match=r"contains pickled files \(vision_tower/torch_artifacts\.pth\)"):
        load_bundle(Bundle.open(dropped.path))
