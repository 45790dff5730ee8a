"""Several images per request through ``rbln-vlm``: two images per document, interleaved with the text, on LLaVA
(CLIP tower + the demo Llama, :func:`vlmmodels.tiny_llava`) and Qwen2-VL (the demo Llama with a random vision tower,
:func:`vlmmodels.tiny_qwen_vl`), each compiled at batch 2.

The local tasks (:func:`vlmmodels_more.two_image_tasks`) carry two images per document, their ``<image>``
placeholders first, between text parts, or around the text. For each architecture:

- generations identical to the reference's (lm_eval's ``hf-multimodal``: transformers' greedy ``generate`` on the
  processor's inputs), plain and chat-templated;
- the prompts ``rbln-vlm`` encodes are the reference's, token for token and pixel for pixel, and the processor's own
  encoding of the prompt written out by hand (each placeholder as the model's image token, where the text puts it);
  chat-templated, the images are parts of the message where their placeholders are (``interleave``) or before its
  text, as the reference and the processor's chat template put them;
- ``max_images=1`` keeps the first image on both sides (the first placeholder expanded, the later ones no images):
  the same prompts as the reference's and log-likelihoods within 1e-4 of transformers' over the first image;
- multimodal log-likelihoods of two-image contexts within 1e-4 of a transformers forward.

LLaVA-NeXT takes one image per prompt through optimum-rbln (two images tiled differently fail in its
``get_image_features``): ``rbln-vlm`` refuses ``max_images`` > 1 at load and several images in a request before any
device work.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from lm_eval.api.instance import Instance

from rbln_eval.api import CompileOptions, open_lm
from rbln_eval.build.workflow import compile_bundle, plan_compile
from rbln_eval.execution.loader import load_bundle
from rbln_eval.families.vision_language.processors import TOKEN_FIELDS, load_processor
from rbln_eval.store import Store
from vlmchecks import TOLERANCE, compile_tiny_model, evaluate, reference_lm, responses, transformers_model
from vlmmodels import QWEN_DEMO_IMAGE, tiny_llava, tiny_qwen_vl
from vlmmodels_more import TWO_IMAGE_PLACEMENTS, two_image_tasks

DOCS = len(TWO_IMAGE_PLACEMENTS)


@dataclass(frozen=True)
class Architecture:
    """A tiny model, how it is compiled, its image token, and the tokens one image of the tasks becomes."""

    build: Callable[[str], Path]
    options: CompileOptions
    image_token: str
    tokens_per_image: int


ARCHITECTURES = {
    "llava": Architecture(tiny_llava, CompileOptions(batch_size=2), "<image>", 16),
    "qwen2_vl": Architecture(
        lambda root: tiny_qwen_vl(root, "qwen2_vl"),
        CompileOptions(batch_size=2, extra={"visual": {"max_seq_len": (QWEN_DEMO_IMAGE // 4) ** 2}}), "<|image_pad|>", 16,
    ),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vlm-multi-image")


@pytest.fixture(scope="module")
def tasks(root: Path) -> Path:
    return two_image_tasks(str(root))


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def env(request: pytest.FixtureRequest, root: Path) -> dict[str, Any]:
    arch = ARCHITECTURES[request.param]
    return {**compile_tiny_model(request.param, arch.build, arch.options, root), "arch": arch}


def documents(tasks: Path, task: str) -> list[tuple[dict[str, Any], list[Any]]]:
    from PIL import Image

    docs = [json.loads(line) for line in (tasks / f"{task}.jsonl").read_text().splitlines()]
    return [(doc, [Image.open(tasks / name).convert("RGB") for name in doc["images"]]) for doc in docs]


def generations(model: Any, tasks: Path, chat: bool) -> list[Any]:
    """``model``'s responses to the two-image generation task, in document order."""
    return responses(evaluate(model, tasks, "vlm2_gen", chat), "vlm2_gen")


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat"])
def test_two_image_generations_identical_to_the_reference(env: dict[str, Any], tasks: Path, chat: bool) -> None:
    reference = generations(reference_lm(env["model_dir"]), tasks, chat)
    vlm = open_lm(env["bundle"])  # a fresh model: chat templating is per model, as in hf
    ours = generations(vlm, tasks, chat)
    print(f"{env['model_type']} {'chat' if chat else 'plain'}:", [r[0][0] for r in ours])
    assert ours == reference
    assert len(ours) == DOCS and len({r[0][0] for r in ours}) > 1
    assert vlm.device_counters["vision"]["calls"] == 2 * DOCS  # each document's two images, once


def written_out(context: str, image_token: str, max_images: int) -> str:
    """``context`` as lm_eval's ``replace_placeholders`` makes it, written out: the first ``max_images`` placeholders
    as the image token, the later ones dropped where the image token is ``<image>`` itself, else left as text."""
    later = "" if image_token == "<image>" else "<image>"
    first, *rest = context.split("<image>")
    return first + "".join((image_token if n < max_images else later) + part for n, part in enumerate(rest))


def generation_requests(tasks: Path) -> list[Instance]:
    return [
        Instance("generate_until", doc=doc, arguments=(doc["context"], {"until": ["."], "max_gen_toks": 8}, {"visual": images}), idx=i)
        for i, (doc, images) in enumerate(documents(tasks, "vlm2_gen"))
    ]


def assert_same_inputs(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert sorted(ours) == sorted(theirs)
    for name, value in ours.items():
        assert torch.equal(torch.as_tensor(value), torch.as_tensor(theirs[name]).to(torch.as_tensor(value).dtype)), name


@pytest.mark.parametrize("max_images", [2, 1])
def test_prompts_are_the_processors_and_the_references(env: dict[str, Any], tasks: Path, max_images: int) -> None:
    """Placeholders stay where the text puts them; with ``max_images=1`` the first image is kept and the later
    placeholders are not images, on both sides."""
    arch, processor = env["arch"], env["processor"]
    requests = generation_requests(tasks)
    vlm = open_lm(env["bundle"], max_images=str(max_images))
    reference = reference_lm(env["model_dir"], max_images=max_images)
    items = vlm._generation_items(requests)
    image_id = processor.tokenizer.convert_tokens_to_ids(arch.image_token)
    for (work, _), request in zip(items, requests):
        context, _, aux = request.args
        images = aux["visual"]
        theirs = reference.tok_batch_multimodal_encode([context], [images])
        assert list(work.tokens) == theirs["input_ids"][0].tolist()
        assert_same_inputs(work.media.inputs, {k: v for k, v in theirs.items() if k != "input_ids" and k not in TOKEN_FIELDS})
        assert work.media.count == max_images
        batch = images[:max_images] if env["model_type"] == "llava" else [images[:max_images]]
        encoded = processor(images=batch, text=[written_out(context, arch.image_token, max_images)], return_tensors="pt")
        assert list(work.tokens) == encoded["input_ids"][0].tolist()
        assert list(work.tokens).count(image_id) == max_images * arch.tokens_per_image
        # the images sit where their placeholders are: text between them stays between them
        between = context.split("<image>")[1]
        if max_images == 2 and between.strip():
            ids = list(work.tokens)
            runs = [i for i, token in enumerate(ids) if token == image_id and (i == 0 or ids[i - 1] != image_id)]
            assert len(runs) == 2
            middle = processor.tokenizer.decode(ids[runs[0] : runs[1]]).replace(arch.image_token, "")
            assert between.strip() in middle


@pytest.mark.parametrize("interleave", [True, False], ids=["interleaved", "images-first"])
def test_chat_prompts_place_the_images_as_the_reference(env: dict[str, Any], tasks: Path, interleave: bool) -> None:
    """Chat-templated: each image part where its placeholder is (``interleave``), or all of them before the text; as
    hf-multimodal's chat messages and as the processor's chat template renders them written out by hand."""
    processor = env["processor"]
    vlm = open_lm(env["bundle"], interleave=str(interleave))
    reference = reference_lm(env["model_dir"], interleave=interleave)
    for request in generation_requests(tasks):
        context, kwargs, aux = request.args
        ours = vlm.apply_chat_template([{"role": "user", "content": context}])
        assert ours == reference.apply_chat_template([{"role": "user", "content": context}])
        parts = context.split("<image>")
        if interleave:
            content = [{"type": "text", "text": parts[0]}] if parts[0] else []
            for part in parts[1:]:
                content += [{"type": "image"}] + ([{"type": "text", "text": part}] if part else [])
        else:
            content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "".join(parts)}]
        messages = [{"role": "user", "content": content}]
        assert ours == processor.apply_chat_template(messages, add_generation_prompt=True, continue_final_message=False)
        (work, _), = vlm._generation_items([Instance("generate_until", doc={}, arguments=(ours, kwargs, aux), idx=0)])
        assert list(work.tokens) == reference.tok_batch_multimodal_encode([ours], [aux["visual"]])["input_ids"][0].tolist()


def transformers_loglikelihood(
    hf: Any, processor: Any, model_type: str, image_token: str, max_images: int, context: str, continuation: str, images: list
) -> float:
    """Sum of log-probs of the continuation tokens after the context and its first ``max_images`` images (the context
    :func:`written_out`), from one transformers forward."""
    context, images = written_out(context, image_token, max_images), images[:max_images]
    batch = images if model_type == "llava" else [images]
    whole = processor(images=batch, text=[context + continuation], return_tensors="pt")
    first = processor(images=batch, text=[context], return_tensors="pt")["input_ids"].shape[1]
    target = whole["input_ids"][0, first:]
    with torch.no_grad():
        logits = hf(**whole).logits[0]
    scored = torch.log_softmax(logits[first - 1 : -1].float(), dim=-1)
    return float(scored.gather(1, target[:, None]).sum())


def test_two_image_loglikelihoods_match_a_transformers_forward(env: dict[str, Any], tasks: Path) -> None:
    requests = [
        (doc["context"], " " + choice, images) for doc, images in documents(tasks, "vlm2_mc") for choice in doc["choices"]
    ]
    instances = [Instance("loglikelihood", doc={}, arguments=(c, x, {"visual": imgs}), idx=i) for i, (c, x, imgs) in enumerate(requests)]
    ours = open_lm(env["bundle"]).loglikelihood(instances, disable_tqdm=True)
    hf = transformers_model(env["model_dir"])
    arch = env["arch"]
    reference = [transformers_loglikelihood(hf, env["processor"], env["model_type"], arch.image_token, 2, *r) for r in requests]
    worst = max(abs(a[0] - b) for a, b in zip(ours, reference))
    print(f"{env['model_type']}: max |delta log-prob| over {len(requests)} two-image requests: {worst:.2e}")
    assert worst <= TOLERANCE, worst
    # max_images=1: the first image only, on both sides
    first_only = open_lm(env["bundle"], max_images="1").loglikelihood(instances, disable_tqdm=True)
    one = [transformers_loglikelihood(hf, env["processor"], env["model_type"], arch.image_token, 1, *r) for r in requests]
    worst_one = max(abs(a[0] - b) for a, b in zip(first_only, one))
    print(f"{env['model_type']}: max |delta log-prob| with max_images=1: {worst_one:.2e}")
    assert worst_one <= TOLERANCE, worst_one
    assert all(abs(a[0] - b[0]) > 1e-4 for a, b in zip(ours, first_only))  # the second image counted


LLAVA_NEXT_REFUSAL = (
    "{what} for a llava_next: optimum-rbln 0.12.0 takes one image per prompt "
    "(optimum/rbln/transformers/models/llava_next/modeling_llava_next.py:get_image_features sizes the projector's output "
    "for the tiles of all images padded to the most tiled one's, then splits it by each image's own tiles): pass max_images=1"
)


def test_llava_next_takes_one_image_per_prompt(root: Path, tasks: Path) -> None:
    """LLaVA-NeXT tiles each image by its aspect ratio: two images tiled differently fail in optimum-rbln, so
    ``rbln-vlm`` refuses ``max_images`` > 1 at load and a request with several images before any device work;
    ``max_images=1`` scores the first image."""
    from rbln_eval.errors import ConfigError, MultimodalRequestError
    from vlmmodels import tiny_llava_next

    model_dir = tiny_llava_next(str(root))
    bundle = compile_bundle(plan_compile(str(model_dir), CompileOptions(batch_size=1), npu="RBLN-CA25"), Store(root / "store")).bundle
    with pytest.raises(ConfigError) as refused:
        open_lm(bundle, max_images="2")
    assert str(refused.value) == LLAVA_NEXT_REFUSAL.format(what="max_images=2")
    vlm = open_lm(bundle)
    first, second = documents(tasks, "vlm2_gen")[0][1]
    wide, square = first.resize((64, 32)), second
    request = Instance("generate_until", doc={}, arguments=("<image> <image> Then", {"max_gen_toks": 4}, {"visual": [wide, square]}), idx=0)
    with pytest.raises(MultimodalRequestError) as refused_request:
        vlm.generate_until([request], disable_tqdm=True)
    assert str(refused_request.value) == LLAVA_NEXT_REFUSAL.format(what="a request with 2 images")
    assert "vision" not in vlm.device_counters
    # where optimum-rbln fails: a 2:1 image is 3 tiles, a square one 5 (padded to 5 each)
    inputs = load_processor(model_dir, "llava_next")(images=[wide, square], text=["<image> <image>"], return_tensors="pt")
    model = load_bundle(bundle).model
    with torch.no_grad(), pytest.raises(RuntimeError, match=r"split_sizes to sum exactly to 10 .* got split_sizes=\[3, 5\]"):
        model.get_image_features(inputs["pixel_values"], inputs["image_sizes"], vision_feature_layer=-1, vision_feature_select_strategy="default")
    one = open_lm(bundle, max_images="1").generate_until([request], disable_tqdm=True)
    reference = reference_lm(model_dir, max_images=1)
    assert one == reference.generate_until([request], disable_tqdm=True)
