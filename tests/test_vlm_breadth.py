"""Vision-language architectures beyond LLaVA scored through ``rbln-vlm``: Qwen2-VL, Qwen2.5-VL, Gemma3, Idefics3,
LLaVA-NeXT.

transformers' ``AutoProcessor`` builds none of Qwen2-VL's, Qwen2.5-VL's and Idefics3's processors without
torchvision; ``rbln-vlm`` and its reference build them (:mod:`rbln_eval.families.vision_language.processors`). Each
architecture is a tiny model (the demo Llama is the language model of Qwen's, :func:`vlmmodels.tiny_qwen_vl`, and
of Idefics3's, which splits an image into tiles, :func:`vlmmodels.tiny_idefics3`, and of LLaVA-NeXT's, whose
anyres processor tiles an image by its aspect ratio, :func:`vlmmodels.tiny_llava_next`; Gemma3 is random, with a
sliding-window layer whose window is shorter than an image prompt, :func:`vlmmodels.tiny_gemma3`), compiled at
batch 2, and is checked:

- Qwen's image-only processor expands and tokenizes prompts as written out by hand (image processor, image pads,
  tokenizer);
- on the device, logits within 1e-4 of transformers at every prefill and decode position (Gemma3: the last prefill
  position, its bundles keep last logits), greedy tokens identical, image and text-only prompts decoding together
  (LLaVA-NeXT: a square image and a 2:1 one, whose tiles are unpadded);
- ``rbln-vlm`` generations on the local image task identical to the reference's, plain and chat-templated: lm_eval's
  ``hf-multimodal`` over the same processor, i.e. transformers' own greedy ``generate`` on the same inputs;
- multimodal log-likelihoods within 1e-4 of a transformers forward (and of the reference ``compare`` uses).

A full-logit Gemma3 is refused at compile. LLaVA-NeXT's bundle carries its image newline (optimum-rbln saves it as
a bare tensor) as safetensors like every other torch artifact (:mod:`rbln_eval.store.tensors`).
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from rbln_eval.api import CompileOptions, open_lm
from rbln_eval.build.workflow import compile_bundle, plan_compile
from rbln_eval.core.programs import Open, Step, run_programs, with_media
from rbln_eval.core.work import Media
from rbln_eval.execution.loader import load_bundle
from rbln_eval.families.causal.programs import causal_greedy_program
from rbln_eval.families.registry import family_of
from rbln_eval.families.vision_language.backend import (
    FEATURE_TYPES,
    ImagePrefillBackend,
    MultimodalRopeBackend,
    VisionLanguageBackend,
)
from rbln_eval.families.vision_language.compile import SCORED_VLM_TYPES
from rbln_eval.families.vision_language.lm import TOKEN_FIELDS
from rbln_eval.families.vision_language.processors import IMAGE_ONLY_PROCESSORS, load_processor
from rbln_eval.families.vision_language.reference import HFMultimodalReference
from rbln_eval.store import Store
from remotehelpers import cli, one_line_exit_2
from vlmmodels import IMAGE_SIZE, QWEN_DEMO_IMAGE, image_tasks, make_image, tiny_gemma3, tiny_idefics3, tiny_llava_next, tiny_qwen_vl

TOLERANCE = 1e-4
NEW_TOKENS = 8
QWEN_PATCHES = {"visual": {"max_seq_len": (QWEN_DEMO_IMAGE // 4) ** 2}}  # the vision tower's patches per image
#: Device-level prompts of Qwen: the image after the vision start token (as its chat template puts it), and bare.
QWEN_PROMPTS = [
    "<|vision_start|><|image_pad|><|vision_end|> The evaluation rules for the",
    "Look at this: <|image_pad|>\nThe result is then bound",
]


@dataclass(frozen=True)
class Architecture:
    """A tiny model of one architecture, how it is compiled, and the string standing for an image in its prompts."""

    build: Callable[[str], Path]
    options: CompileOptions
    image_string: str
    backend: type
    lm_args: dict[str, str] = field(default_factory=dict)  # model_args of rbln-vlm and of the reference
    image_sizes: tuple[tuple[int, int], ...] = ((48, 48), (48, 48))  # (width, height) of the two prompts' images

    def images(self) -> list[Any]:
        return [make_image(seed).resize(size) for seed, size in enumerate(self.image_sizes)]

    def prompts(self) -> list[str]:
        if self.image_string == "<|image_pad|>":
            return QWEN_PROMPTS
        return [f"{self.image_string} The evaluation rules for the", f"Look at this: {self.image_string}\nThe result is then bound"]


ARCHITECTURES = {
    "qwen2_vl": Architecture(
        lambda root: tiny_qwen_vl(root, "qwen2_vl"), CompileOptions(batch_size=2, extra=QWEN_PATCHES), "<|image_pad|>",
        MultimodalRopeBackend,
    ),
    "qwen2_5_vl": Architecture(
        lambda root: tiny_qwen_vl(root, "qwen2_5_vl"), CompileOptions(batch_size=2, extra=QWEN_PATCHES), "<|image_pad|>",
        MultimodalRopeBackend,
    ),
    # hf-multimodal's default image string is the config's image token, Gemma3's soft token, which its processor
    # does not expand: the start-of-image token is passed, as lm_eval's Gemma3 configs do
    "gemma3": Architecture(
        tiny_gemma3, CompileOptions(batch_size=2, logits="last"), "<start_of_image>", ImagePrefillBackend,
        {"image_string": "<start_of_image>"},
    ),
    "idefics3": Architecture(tiny_idefics3, CompileOptions(batch_size=2), "<image>", VisionLanguageBackend),
    # anyres: the 2:1 image is tiled 2 x 1 and its features unpadded to its aspect ratio
    "llava_next": Architecture(
        tiny_llava_next, CompileOptions(batch_size=2), "<image>", VisionLanguageBackend, image_sizes=((48, 48), (48, 24)),
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
    model_type = request.param
    arch = ARCHITECTURES[model_type]
    model_dir = arch.build(str(root))
    started = time.perf_counter()
    bundle = compile_bundle(plan_compile(str(model_dir), arch.options, npu="RBLN-CA25"), Store(root / "store")).bundle
    print(f"{model_type}: compiled in {time.perf_counter() - started:.1f} s")
    return {
        "model_type": model_type, "arch": arch, "model_dir": model_dir, "bundle": bundle,
        "processor": load_processor(model_dir, model_type),
    }


@pytest.fixture(scope="module")
def hf(env: dict[str, Any]) -> Any:
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(env["model_dir"], dtype=torch.float32).eval()


def test_the_architectures_are_scored() -> None:
    assert set(ARCHITECTURES) <= set(SCORED_VLM_TYPES)


@pytest.mark.parametrize("model_type", list(IMAGE_ONLY_PROCESSORS))
def test_image_only_processor_encodes_prompts_as_written_out_by_hand(root: Path, model_type: str) -> None:
    from transformers import AutoTokenizer
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    model_dir = tiny_qwen_vl(str(root), model_type)
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


def _teacher_forced(sequence: list[int], prompt_length: int, out: list[torch.Tensor]):
    prefill = yield Open(sequence[:prompt_length])
    out.extend(prefill)
    for position in range(prompt_length, len(sequence)):
        out.append((yield Step(sequence[position], position)))
    return None


def _image_inputs(encoding: Any) -> dict[str, torch.Tensor]:
    """The processor's image tensors (what rbln-vlm passes on with a prompt's tokens)."""
    return {name: value for name, value in encoding.items() if name != "input_ids" and name not in TOKEN_FIELDS}


def _forward_inputs(encoding: Any, sequence: list[int]) -> dict[str, torch.Tensor]:
    """transformers' inputs for the prompt of ``encoding`` followed by generated (text) tokens."""
    ids = torch.tensor([sequence])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), **_image_inputs(encoding)}
    for name in ("mm_token_type_ids", "token_type_ids"):  # image tokens 1, text 0
        if name in encoding:
            types = encoding[name]
            inputs[name] = torch.cat([types, types.new_zeros(1, len(sequence) - types.shape[1])], dim=1)
    return inputs


def _with_media(program: Any, encoding: Any) -> Any:
    """``program`` with the images of ``encoding``; a text-only prompt's as it is."""
    inputs = _image_inputs(encoding)
    return with_media(program, Media(inputs, 1, "")) if inputs else program


def test_logits_and_greedy_tokens_match_transformers(env: dict[str, Any], hf: Any) -> None:
    """Two image prompts and a text-only one on the two rows (the third takes the row the first frees)."""
    processor = env["processor"]
    pairs = zip(env["arch"].images(), env["arch"].prompts())
    encodings = [processor(images=[[image]], text=[text], return_tensors="pt") for image, text in pairs]
    encodings.append(processor(text=["If a name is annotated in a function scope, then"], return_tensors="pt"))
    with torch.no_grad():
        greedy = [hf.generate(**enc, max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist() for enc in encodings]
        reference = [hf(**_forward_inputs(enc, sequence)).logits[0] for sequence, enc in zip(greedy, encodings)]
    loaded = load_bundle(env["bundle"])
    backend = family_of(loaded.model_class).backend(loaded.model)
    assert type(backend) is env["arch"].backend and backend.batch_size == 2
    collected: list[list[torch.Tensor]] = [[] for _ in encodings]
    run_programs(backend, [_with_media(_teacher_forced(greedy[i], enc["input_ids"].shape[1], collected[i]), enc) for i, enc in enumerate(encodings)])
    worst = 0.0
    for mine, ref, enc in zip(collected, reference, encodings):
        prompt = enc["input_ids"].shape[1]
        assert len(mine) == (ref.shape[0] if backend.full_logits else ref.shape[0] - prompt + 1)  # or the prefill's last
        worst = max(worst, float((torch.stack(mine) - ref[-len(mine) :]).abs().max()))
    print(f"{env['model_type']}: max |logit delta| {worst:.2e} ({'full' if backend.full_logits else 'last'} logits)")
    assert worst <= TOLERANCE, worst
    programs = [
        _with_media(causal_greedy_program(backend, enc["input_ids"][0].tolist(), NEW_TOKENS, lambda t: False, frozenset()), enc)
        for enc in encodings
    ]
    answers = [ref[enc["input_ids"].shape[1] :] for enc, ref in zip(encodings, greedy)]
    assert run_programs(backend, programs) == answers
    assert answers[0] != answers[1]
    assert backend.counters.as_dict()["vision"]["calls"] == 4  # each image prompt twice (no content key: no reuse)


def _reference_lm(env: dict[str, Any]) -> HFMultimodalReference:
    return HFMultimodalReference(pretrained=str(env["model_dir"]), dtype="float32", device="cpu", batch_size=1, **env["arch"].lm_args)


def _evaluate(model: Any, tasks: Path, task: str, chat: bool = False) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=model, tasks=[task], log_samples=True, apply_chat_template=chat,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
    )


def _responses(results: dict[str, Any], task: str) -> list[Any]:
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_generations_identical_to_the_reference(env: dict[str, Any], tasks: Path, chat: bool) -> None:
    reference = _responses(_evaluate(_reference_lm(env), tasks, "vlm_gen", chat), "vlm_gen")
    vlm = open_lm(env["bundle"], **env["arch"].lm_args)  # a fresh model: chat templating is per model, as in hf
    results = _evaluate(vlm, tasks, "vlm_gen", chat)
    ours = _responses(results, "vlm_gen")
    print(f"{env['model_type']} {'chat' if chat else 'plain'} generations:", [r[0] for r in ours])
    assert len(ours) == len(reference) == 6
    assert ours == reference
    assert len({r[0][0] for r in reference}) > 1
    assert vlm.device_counters["vision"]["calls"] == 6  # one vision pass per document
    assert results["config"]["rbln"]["multimodal"] == {"model_type": env["model_type"], "image_token": env["arch"].image_string}


def _mc_requests(tasks: Path) -> list[tuple[str, str, list]]:
    from PIL import Image

    requests = []
    for line in (tasks / "vlm_mc.jsonl").read_text().splitlines():
        doc = json.loads(line)
        images = [Image.open(tasks / name).convert("RGB") for name in doc["images"]]
        requests.extend((doc["context"], " " + choice, images) for choice in doc["choices"])
    return requests


def _transformers_loglikelihood(
    hf: Any, processor: Any, image_string: str, context: str, continuation: str, images: list
) -> tuple[float, bool]:
    """Sum of log-probs of the continuation tokens after context + images (its ``<image>`` placeholders as
    ``image_string``), from one transformers forward."""
    context = context.replace("<image>", image_string)
    whole = processor(images=[images], text=[context + continuation], return_tensors="pt")
    context_ids = processor(images=[images], text=[context], return_tensors="pt")["input_ids"][0]
    ids = whole["input_ids"][0]
    target = ids[len(context_ids) :]
    with torch.no_grad():
        logits = hf(**whole).logits[0]
    scored = torch.log_softmax(logits[len(context_ids) - 1 : len(ids) - 1].float(), dim=-1)
    return float(scored.gather(1, target[:, None]).sum()), bool((scored.argmax(-1) == target).all())


def test_multimodal_loglikelihood_matches_a_transformers_forward(env: dict[str, Any], hf: Any, tasks: Path) -> None:
    """Continuations of several tokens: teacher-forced after the prefill where the bundle keeps last logits
    (Gemma3: one continuation per prefill, its sliding window holds less than the prompt)."""
    from lm_eval.api.instance import Instance

    requests = [(context, choice + " of it", images) for context, choice, images in _mc_requests(tasks)]
    # the first document's context and choices again with another document's image: scored apart, not shared
    first = [r for r in requests if r[0] == requests[0][0]]
    requests += [(context, choice, requests[-1][2]) for context, choice, _ in first]
    instances = [
        Instance("loglikelihood", doc={}, arguments=(c, x, {"visual": imgs}), idx=i) for i, (c, x, imgs) in enumerate(requests)
    ]
    vlm = open_lm(env["bundle"], **env["arch"].lm_args)
    ours = vlm.loglikelihood(instances, disable_tqdm=True)
    image_string = env["arch"].image_string
    reference = [_transformers_loglikelihood(hf, env["processor"], image_string, c, x, imgs) for c, x, imgs in requests]
    worst = max(abs(a[0] - b[0]) for a, b in zip(ours, reference))
    print(f"{env['model_type']}: max |delta log-prob| over {len(requests)} multimodal requests: {worst:.2e}")
    assert worst <= TOLERANCE, worst
    assert [a[1] for a in ours] == [b[1] for b in reference]
    # Gemma3's image features are kept per image (one per document); the others' vision runs with each prefill
    passes = len({id(images) for _, _, images in requests}) if env["model_type"] in FEATURE_TYPES else len(requests)
    assert vlm.device_counters["vision"]["calls"] == passes
    # the reference of `rbln-eval compare` scores the same requests the same way
    compared = _reference_lm(env).loglikelihood(instances, disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(compared, reference)) <= 1e-5
    assert [a[1] for a in compared] == [b[1] for b in reference]
    same_text = ours[: len(first)], ours[-len(first) :]
    assert all(abs(a[0] - b[0]) > 1e-3 for a, b in zip(*same_text))


def test_a_full_logit_gemma3_is_refused_before_compiling(root: Path, tmp_path: Path) -> None:
    """optimum-rbln's prefill of a model with sliding-window layers returns its last position's logits only."""
    store = tmp_path / "store"
    result = cli("compile", str(tiny_gemma3(str(root))), "--npu", "RBLN-CA25", "--store", str(store))
    line = one_line_exit_2(result, "--logits all with gemma3")
    assert line == (
        "error: --logits all with gemma3: optimum-rbln 0.12.0 returns one logit row per prefill chunk of a model with "
        "sliding-window layers (optimum/rbln/transformers/models/decoderonly/decoderonly_architecture.py:"
        "DecoderOnlyForCausalLM.forward): compile it with --logits last"
    )
    assert result.stdout == "" and not store.exists()


def test_llava_next_tiles_an_image_by_its_aspect_ratio(root: Path) -> None:
    """The anyres processor: 2 x 2 tiles of a square image, 2 x 1 of a 2:1 one, each plus the whole image."""
    processor = load_processor(tiny_llava_next(str(root)), "llava_next")
    images = ARCHITECTURES["llava_next"].images()
    encodings = [processor(images=[image], text=["<image>"], return_tensors="pt") for image in images]
    assert [int(e["pixel_values"].shape[1]) for e in encodings] == [5, 3]
    assert [e["image_sizes"].tolist() for e in encodings] == [[[48, 48]], [[24, 48]]]
    assert all(e["pixel_values"].shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE) for e in encodings)
