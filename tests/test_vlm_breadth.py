"""Vision-language architectures beyond LLaVA scored through ``rbln-vlm``: LLaVA-NeXT, Qwen2-VL, Qwen2.5-VL,
Qwen3-VL, Gemma3, Idefics3, PaliGemma and a LLaVA with a Pixtral vision tower.

transformers' ``AutoProcessor`` builds none of the Qwen processors and Idefics3's without torchvision, nor imports
``PixtralProcessor``; ``rbln-vlm`` and its reference build them
(:mod:`rbln_eval.families.vision_language.processors`). Each architecture is a tiny model, compiled at batch 2: the
demo Llama is the language model of Qwen2-VL's and Qwen2.5-VL's (:func:`vlmmodels.tiny_qwen_vl`), of Idefics3's,
which splits an image into tiles (:func:`vlmmodels.tiny_idefics3`), of LLaVA-NeXT's, whose anyres processor tiles an
image by its aspect ratio (:func:`vlmmodels.tiny_llava_next`), and of the Pixtral LLaVA's
(:func:`vlmmodels_more.tiny_llava_pixtral`); Gemma3 is random, with a sliding-window layer whose window is shorter
than an image prompt (:func:`vlmmodels.tiny_gemma3`), and so are PaliGemma and Qwen3-VL, whose image features also
enter its first layer: deepstack (:mod:`vlmmodels_more`). Each is checked (:mod:`vlmchecks`):

- the Qwen image-only processors expand and tokenize prompts as written out by hand (image processor, image pads,
  tokenizer), and the Pixtral one as transformers' ``PixtralProcessor`` would;
- on the device, logits within 1e-4 of transformers at every prefill and decode position (Gemma3 and PaliGemma: from
  the last prefill position, their bundles keep last logits), greedy tokens identical, image and text-only prompts
  decoding together (LLaVA-NeXT: a square image and a 2:1 one, whose tiles are unpadded; Pixtral: a 1:2 one);
- ``rbln-vlm`` generations on the local image task identical to the reference's, plain and chat-templated: lm_eval's
  ``hf-multimodal`` over the same processor, i.e. transformers' own greedy ``generate`` on the same inputs;
- multimodal log-likelihoods within 1e-4 of a transformers forward (and of the reference ``compare`` uses).

A full-logit Gemma3 is refused at compile. LLaVA-NeXT's bundle carries its image newline (optimum-rbln saves it as
a bare tensor) as safetensors like every other torch artifact (:mod:`rbln_eval.store.tensors`).

PaliGemma is a prefix-LM: transformers attends bidirectionally over a prompt (its images and text) and causally
over what follows, the suffix. optimum-rbln prefills a prompt as one chunk attending bidirectionally and decodes
causally, so the reference of a decode position is transformers' incremental forward over its KV cache (as
``generate`` runs), and a log-likelihood scores the continuation as the prompt's suffix (the processor's
``suffix``, whose ``token_type_ids`` give transformers that mask). A full-logit PaliGemma is refused at compile:
the logits of its bidirectional prefill see the tokens after each position.

The Pixtral LLaVA keeps each image's aspect ratio: optimum-rbln pads an image's patches to the tower's compiled size
(``vision_tower.max_image_size``) and cuts the padding off its output.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch

from rbln_eval.api import CompileOptions, open_lm
from rbln_eval.core.programs import run_programs
from rbln_eval.execution.loader import load_bundle
from rbln_eval.families.causal.programs import causal_greedy_program
from rbln_eval.families.registry import family_of
from rbln_eval.families.vision_language.backend import (
    FEATURE_TYPES,
    ImagePrefillBackend,
    MultimodalRopeBackend,
    PrefixLMBackend,
    VisionLanguageBackend,
)
from rbln_eval.families.vision_language.compile import SCORED_VLM_TYPES
from rbln_eval.families.vision_language.processors import IMAGE_ONLY_PROCESSORS, load_processor
from remotehelpers import cli, one_line_exit_2
from vlmchecks import (
    NEW_TOKENS,
    TOLERANCE,
    Architecture,
    bundle_reference_logits,
    compile_tiny_model,
    encode_prompts,
    evaluate,
    mc_requests,
    model_inputs,
    reference_lm,
    responses,
    runner,
    teacher_forced,
    transformers_loglikelihood,
    transformers_model,
    with_images,
)
from vlmmodels import IMAGE_SIZE, QWEN_DEMO_IMAGE, image_tasks, make_image, tiny_gemma3, tiny_idefics3, tiny_llava_next, tiny_qwen_vl
from vlmmodels_more import PIXTRAL_TOKENS, QWEN3_IMAGE, tiny_blip2, tiny_llava_pixtral, tiny_paligemma, tiny_qwen3_vl

#: Architectures whose processor transformers builds without its chat template (``Blip2Processor.__init__`` does not
#: pass it on), so chat-templated prompts are refused by ``hf-multimodal`` and ``rbln-vlm`` alike.
NO_CHAT_TEMPLATE = ("blip-2",)
QWEN_PATCHES = {"visual": {"max_seq_len": (QWEN_DEMO_IMAGE // 4) ** 2}}  # the vision tower's patches per image

ARCHITECTURES = {
    "qwen2_vl": Architecture(
        "qwen2_vl", lambda root: tiny_qwen_vl(root, "qwen2_vl"), CompileOptions(batch_size=2, extra=QWEN_PATCHES),
        "<|image_pad|>", MultimodalRopeBackend,
    ),
    "qwen2_5_vl": Architecture(
        "qwen2_5_vl", lambda root: tiny_qwen_vl(root, "qwen2_5_vl"), CompileOptions(batch_size=2, extra=QWEN_PATCHES),
        "<|image_pad|>", MultimodalRopeBackend,
    ),
    # hf-multimodal's default image string is the config's image token, Gemma3's soft token, which its processor
    # does not expand: the start-of-image token is passed, as lm_eval's Gemma3 configs do
    "gemma3": Architecture(
        "gemma3", tiny_gemma3, CompileOptions(batch_size=2, logits="last"), "<start_of_image>", ImagePrefillBackend,
        {"image_string": "<start_of_image>"},
    ),
    "idefics3": Architecture("idefics3", tiny_idefics3, CompileOptions(batch_size=2), "<image>", VisionLanguageBackend),
    # anyres: the 2:1 image is tiled 2 x 1 and its features unpadded to its aspect ratio
    "llava_next": Architecture(
        "llava_next", tiny_llava_next, CompileOptions(batch_size=2), "<image>", VisionLanguageBackend,
        image_sizes=((48, 48), (48, 24)),
    ),
    "paligemma": Architecture("paligemma", tiny_paligemma, CompileOptions(batch_size=2, logits="last"), "<image>", PrefixLMBackend),
    "qwen3_vl": Architecture(
        "qwen3_vl", tiny_qwen3_vl, CompileOptions(batch_size=2, extra={"visual": {"max_seq_len": (QWEN3_IMAGE // 4) ** 2}}),
        "<|image_pad|>", MultimodalRopeBackend,
    ),
    # the processor puts the image's query tokens before the prompt: rbln-vlm and the reference drop placeholders
    "blip-2": Architecture("blip-2", tiny_blip2, CompileOptions(batch_size=2), "", VisionLanguageBackend),
    "llava_pixtral": Architecture(
        "llava", tiny_llava_pixtral, CompileOptions(batch_size=2), "[IMG]", VisionLanguageBackend,
        image_sizes=((48, 48), (24, 48)),
    ),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vlm-breadth")


@pytest.fixture(scope="module")
def tasks(root: Path) -> Path:
    return image_tasks(str(root))


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def env(request: pytest.FixtureRequest, root: Path) -> dict[str, Any]:
    arch = ARCHITECTURES[request.param]
    return {**compile_tiny_model(arch.model_type, arch.build, arch.options, root), "arch": arch}


@pytest.fixture(scope="module")
def hf(env: dict[str, Any]) -> Any:
    return transformers_model(env["model_dir"])


def test_the_architectures_are_scored() -> None:
    assert {arch.model_type for arch in ARCHITECTURES.values()} <= set(SCORED_VLM_TYPES)


@pytest.mark.parametrize("model_type", list(IMAGE_ONLY_PROCESSORS))
def test_image_only_processor_encodes_prompts_as_written_out_by_hand(root: Path, model_type: str) -> None:
    from transformers import AutoTokenizer
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    model_dir = ARCHITECTURES[model_type].build(str(root))
    processor = load_processor(model_dir, model_type)
    if importlib.util.find_spec("torchvision") is None:  # transformers' own processor needs it for videos
        assert type(processor) is IMAGE_ONLY_PROCESSORS[model_type]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pixels = AutoImageProcessor.from_pretrained(model_dir)(images=[make_image(7)], return_tensors="pt")
    count = int(pixels["image_grid_thw"].prod()) // 4  # 2 x 2 patches merged into one token
    assert count == (QWEN_DEMO_IMAGE // 8) ** 2
    text = "Image: <|image_pad|>\nIt shows"
    encoding = processor(images=[[make_image(7)]], text=[text], return_tensors="pt")
    expected = tokenizer(text.replace("<|image_pad|>", "<|image_pad|>" * count), return_tensors="pt")["input_ids"]
    assert encoding["input_ids"].tolist() == expected.tolist()
    assert torch.equal(encoding["pixel_values"], pixels["pixel_values"])
    assert torch.equal(encoding["image_grid_thw"], pixels["image_grid_thw"])
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert encoding["mm_token_type_ids"].tolist() == (expected == image_token).int().tolist()
    chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    # (transformers renders chat templates with trim_blocks: the newline after a block tag is dropped)
    assert processor.apply_chat_template(chat, add_generation_prompt=True) == (
        "user: <|vision_start|><|image_pad|><|vision_end|>What is it?assistant:"
    )


def test_logits_and_greedy_tokens_match_transformers(env: dict[str, Any], hf: Any) -> None:
    """Two image prompts and a text-only one on the two rows (the third takes the row the first frees)."""
    model_type = env["model_type"]
    encodings = encode_prompts(env["processor"], model_type, env["arch"])
    with torch.no_grad():
        greedy = [
            runner(hf, enc).generate(**model_inputs(enc), max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist() for enc in encodings
        ]
    loaded = load_bundle(env["bundle"])
    backend = family_of(loaded.model_class).backend(loaded.model)
    assert type(backend) is env["arch"].backend and backend.batch_size == 2
    reference = [bundle_reference_logits(hf, enc, sequence, model_type, backend.full_logits) for enc, sequence in zip(encodings, greedy)]
    collected: list[list[torch.Tensor]] = [[] for _ in encodings]
    programs = [with_images(teacher_forced(greedy[i], enc["input_ids"].shape[1], collected[i]), enc) for i, enc in enumerate(encodings)]
    run_programs(backend, programs)
    worst = 0.0
    for mine, ref in zip(collected, reference):
        assert len(mine) == len(ref)  # every position, or the prefill's last and each decode step
        worst = max(worst, float((torch.stack(mine) - ref).abs().max()))
    print(f"{model_type}: max |logit delta| {worst:.2e} ({'full' if backend.full_logits else 'last'} logits)")
    assert worst <= TOLERANCE, worst
    programs = [
        with_images(causal_greedy_program(backend, enc["input_ids"][0].tolist(), NEW_TOKENS, lambda t: False, frozenset()), enc)
        for enc in encodings
    ]
    answers = [sequence[enc["input_ids"].shape[1] :] for enc, sequence in zip(encodings, greedy)]
    assert run_programs(backend, programs) == answers
    assert answers[0] != answers[1]
    assert backend.counters.as_dict()["vision"]["calls"] == 4  # each image prompt twice (no content key: no reuse)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_generations_identical_to_the_reference(env: dict[str, Any], tasks: Path, chat: bool) -> None:
    lm_args = env["arch"].lm_args
    if chat and env["model_type"] in NO_CHAT_TEMPLATE:  # both sides refuse alike
        for model in (reference_lm(env["model_dir"], **lm_args), open_lm(env["bundle"], **lm_args)):
            with pytest.raises(ValueError, match="this processor does not have a chat template"):
                evaluate(model, tasks, "vlm_gen", chat)
        return
    reference = responses(evaluate(reference_lm(env["model_dir"], **lm_args), tasks, "vlm_gen", chat), "vlm_gen")
    vlm = open_lm(env["bundle"], **lm_args)  # a fresh model: chat templating is per model, as in hf
    results = evaluate(vlm, tasks, "vlm_gen", chat)
    ours = responses(results, "vlm_gen")
    print(f"{env['model_type']} {'chat' if chat else 'plain'} generations:", [r[0] for r in ours])
    assert len(ours) == len(reference) == 6
    assert ours == reference
    assert len({r[0][0] for r in reference}) > 1
    assert vlm.device_counters["vision"]["calls"] == 6  # one vision pass per document
    assert results["config"]["rbln"]["multimodal"] == {"model_type": env["model_type"], "image_token": env["arch"].image_string}


def test_multimodal_loglikelihood_matches_a_transformers_forward(env: dict[str, Any], hf: Any, tasks: Path) -> None:
    """Continuations of several tokens: teacher-forced after the prefill where the bundle keeps last logits
    (Gemma3: one continuation per prefill, its sliding window holds less than the prompt; PaliGemma: the
    continuation is the prompt's suffix)."""
    from lm_eval.api.instance import Instance

    requests = [(context, choice + " of it", images) for context, choice, images in mc_requests(tasks)]
    # the first document's context and choices again with another document's image: scored apart, not shared
    first = [r for r in requests if r[0] == requests[0][0]]
    requests += [(context, choice, requests[-1][2]) for context, choice, _ in first]
    instances = [
        Instance("loglikelihood", doc={}, arguments=(c, x, {"visual": imgs}), idx=i) for i, (c, x, imgs) in enumerate(requests)
    ]
    lm_args = env["arch"].lm_args
    vlm = open_lm(env["bundle"], **lm_args)
    ours = vlm.loglikelihood(instances, disable_tqdm=True)
    model_type, image_string = env["model_type"], env["arch"].image_string
    reference = [transformers_loglikelihood(hf, env["processor"], model_type, image_string, c, x, imgs) for c, x, imgs in requests]
    worst = max(abs(a[0] - b[0]) for a, b in zip(ours, reference))
    print(f"{model_type}: max |delta log-prob| over {len(requests)} multimodal requests: {worst:.2e}")
    assert worst <= TOLERANCE, worst
    assert [a[1] for a in ours] == [b[1] for b in reference]
    # image features kept per image (one per document) where the backend keeps them; else vision runs with each prefill
    passes = len({id(images) for _, _, images in requests}) if model_type in FEATURE_TYPES else len(requests)
    assert vlm.device_counters["vision"]["calls"] == passes
    # the reference of `rbln-eval compare` scores the same requests the same way
    compared = reference_lm(env["model_dir"], **lm_args).loglikelihood(instances, disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(compared, reference)) <= 1e-5
    assert [a[1] for a in compared] == [b[1] for b in reference]
    same_text = ours[: len(first)], ours[-len(first) :]
    assert all(abs(a[0] - b[0]) > 1e-3 for a, b in zip(*same_text))


#: The error compiling a full-logit bundle of each architecture whose bundles keep last logits.
FULL_LOGIT_REFUSALS = {
    # optimum-rbln's prefill of a model with sliding-window layers returns its last position's logits only
    "gemma3": (
        "error: --logits all with gemma3: optimum-rbln 0.12.0 returns one logit row per prefill chunk of a model with "
        "sliding-window layers (optimum/rbln/transformers/models/decoderonly/decoderonly_architecture.py:"
        "DecoderOnlyForCausalLM.forward): compile it with --logits last"
    ),
    # optimum-rbln's prefill of a PaliGemma attends bidirectionally over the whole prompt
    "paligemma": (
        "error: --logits all with paligemma: optimum-rbln 0.12.0 prefills a prompt bidirectionally "
        "(optimum/rbln/transformers/models/decoderonly/decoderonly_architecture.py:AttentionOp.forward), so the logits "
        "of a prompt position see the tokens after it and score nothing: compile it with --logits last"
    ),
}


@pytest.mark.parametrize("model_type", list(FULL_LOGIT_REFUSALS))
def test_a_full_logit_bundle_is_refused_before_compiling(root: Path, tmp_path: Path, model_type: str) -> None:
    store = tmp_path / "store"
    result = cli("compile", str(ARCHITECTURES[model_type].build(str(root))), "--npu", "RBLN-CA25", "--store", str(store))
    assert one_line_exit_2(result, f"--logits all with {model_type}") == FULL_LOGIT_REFUSALS[model_type]
    assert result.stdout == "" and not store.exists()


def test_llava_next_tiles_an_image_by_its_aspect_ratio(root: Path) -> None:
    """The anyres processor: 2 x 2 tiles of a square image, 2 x 1 of a 2:1 one, each plus the whole image."""
    processor = load_processor(tiny_llava_next(str(root)), "llava_next")
    images = ARCHITECTURES["llava_next"].images()
    encodings = [processor(images=[image], text=["<image>"], return_tensors="pt") for image in images]
    assert [int(e["pixel_values"].shape[1]) for e in encodings] == [5, 3]
    assert [e["image_sizes"].tolist() for e in encodings] == [[[48, 48]], [[24, 48]]]
    assert all(e["pixel_values"].shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE) for e in encodings)


def test_the_pixtral_processor_expands_images_as_written_out_by_hand(root: Path) -> None:
    """Rows of ``[IMG]`` (one per 8 px patch) ended by ``[IMG_BREAK]``, the last by ``[IMG_END]``; images resized to a
    32 px longest edge in patch multiples, keeping their aspect ratio (transformers' PixtralProcessor's expansion)."""
    from transformers import AutoTokenizer
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    model_dir = tiny_llava_pixtral(str(root))
    processor = load_processor(model_dir, "llava")
    assert type(processor).__name__ == "PixtralImageTextProcessor"
    images = [make_image(0), make_image(1).resize((24, 48)), make_image(2).resize((60, 20))]
    encoding = processor(images=images, text=["[IMG] one [IMG]\ntwo [IMG] three"], return_tensors="pt")
    assert encoding["image_sizes"].tolist() == [[32, 32], [32, 16], [16, 32]]  # (height, width): 10 px rounded up to 16
    image, row_end, end = PIXTRAL_TOKENS

    def expanded(rows: int, columns: int) -> str:
        return ((image * columns + row_end) * rows)[: -len(row_end)] + end

    text = f"{expanded(4, 4)} one {expanded(4, 2)}\ntwo {expanded(2, 4)} three"
    assert encoding["input_ids"][0].tolist() == AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]
    pixels = PixtralImageProcessorPil(size={"longest_edge": 32}, patch_size=8)(images=images, return_tensors="pt")
    assert torch.equal(encoding["pixel_values"], pixels["pixel_values"])
