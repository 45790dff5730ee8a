"""More vision-language architectures scored through ``rbln-vlm``: PaliGemma, Qwen3-VL and a LLaVA with a Pixtral
vision tower (verified as :mod:`test_vlm_breadth` verifies the others).

Each is a tiny random model (:mod:`vlmmodels_more`), compiled at batch 2, and is checked:

- on the device, logits within 1e-4 of transformers at every prefill and decode position (PaliGemma: the last
  prefill position, its bundles keep last logits), greedy tokens identical, image and text-only prompts decoding
  together (Qwen3-VL's image features also enter its first layer: deepstack);
- ``rbln-vlm`` generations on the local image task identical to the reference's (lm_eval's ``hf-multimodal``, i.e.
  transformers' own greedy ``generate`` on the same inputs), plain and chat-templated;
- multimodal log-likelihoods within 1e-4 of a transformers forward (and of the reference ``compare`` uses).

PaliGemma is a prefix-LM: transformers attends bidirectionally over a prompt (its images and text) and causally
over what follows, the suffix. optimum-rbln prefills a prompt as one chunk attending bidirectionally and decodes
causally, so the reference of a decode position is transformers' incremental forward over its KV cache (as
``generate`` runs), and a log-likelihood scores the continuation as the prompt's suffix (the processor's
``suffix``, whose ``token_type_ids`` give transformers that mask). A full-logit PaliGemma is refused at compile:
the logits of its bidirectional prefill see the tokens after each position.

The Pixtral LLaVA keeps each image's aspect ratio (one of its prompts is 1:2): optimum-rbln pads an image's patches to
the tower's compiled size (``vision_tower.max_image_size``) and cuts the padding off its output. transformers'
``PixtralProcessor`` cannot be imported without torchvision; ``rbln-vlm`` and its reference build the same expansion
(:class:`~rbln_eval.families.vision_language.processors.PixtralImageTextProcessor`), checked against one written out by
hand.
"""

from __future__ import annotations

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
from rbln_eval.families.vision_language.backend import FEATURE_TYPES, MultimodalRopeBackend, PrefixLMBackend, VisionLanguageBackend
from rbln_eval.families.vision_language.compile import PREFIX_LM_TYPES, SCORED_VLM_TYPES
from rbln_eval.families.vision_language.processors import TOKEN_FIELDS, load_processor
from rbln_eval.families.vision_language.reference import HFMultimodalReference
from rbln_eval.store import Store
from remotehelpers import cli, one_line_exit_2
from vlmmodels import image_tasks, make_image
from vlmmodels_more import PIXTRAL_TOKENS, QWEN3_IMAGE, tiny_llava_pixtral, tiny_paligemma, tiny_qwen3_vl

TOLERANCE = 1e-4
NEW_TOKENS = 8
TEXT_ONLY = "If a name is annotated in a function scope, then"
#: Device-level prompts of Qwen: the image after the vision start token (as its chat template puts it), and bare.
QWEN_PROMPTS = [
    "<|vision_start|><|image_pad|><|vision_end|> The evaluation rules for the",
    "Look at this: <|image_pad|>\nThe result is then bound",
]


@dataclass(frozen=True)
class Architecture:
    """A tiny model of one architecture, how it is compiled, and the string standing for an image in its prompts."""

    model_type: str
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
    "paligemma": Architecture("paligemma", tiny_paligemma, CompileOptions(batch_size=2, logits="last"), "<image>", PrefixLMBackend),
    "qwen3_vl": Architecture(
        "qwen3_vl", tiny_qwen3_vl, CompileOptions(batch_size=2, extra={"visual": {"max_seq_len": (QWEN3_IMAGE // 4) ** 2}}),
        "<|image_pad|>", MultimodalRopeBackend,
    ),
    "llava_pixtral": Architecture(
        "llava", tiny_llava_pixtral, CompileOptions(batch_size=2), "[IMG]", VisionLanguageBackend,
        image_sizes=((48, 48), (24, 48)),
    ),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vlm-breadth-more")


@pytest.fixture(scope="module")
def tasks(root: Path) -> Path:
    return image_tasks(str(root))


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def env(request: pytest.FixtureRequest, root: Path) -> dict[str, Any]:
    arch = ARCHITECTURES[request.param]
    model_type = arch.model_type
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
    assert {arch.model_type for arch in ARCHITECTURES.values()} <= set(SCORED_VLM_TYPES)


def teacher_forced(sequence: list[int], prompt_length: int, out: list[torch.Tensor]) -> Any:
    """A program: prefill the prompt of ``sequence``, then step through the rest; every logit row into ``out``."""
    out.extend((yield Open(sequence[:prompt_length])))
    for position in range(prompt_length, len(sequence)):
        out.append((yield Step(sequence[position], position)))
    return None


def image_inputs(encoding: Any) -> dict[str, torch.Tensor]:
    """The processor's image tensors (what rbln-vlm passes on with a prompt's tokens)."""
    return {name: value for name, value in encoding.items() if name != "input_ids" and name not in TOKEN_FIELDS}


def with_images(program: Any, encoding: Any) -> Any:
    """``program`` with the images of ``encoding``; a text-only prompt's as it is."""
    inputs = image_inputs(encoding)
    return with_media(program, Media(inputs, 1, "")) if inputs else program


def encode_prompts(env: dict[str, Any]) -> list[Any]:
    """Two image prompts (the processor's encoding) and a text-only one (PaliGemma's processor takes no text-only
    prompt: its tokenizer's)."""
    processor, arch = env["processor"], env["arch"]
    encodings = [processor(images=[[image]], text=[text], return_tensors="pt") for image, text in zip(arch.images(), arch.prompts())]
    if env["model_type"] in PREFIX_LM_TYPES:
        encodings.append(dict(processor.tokenizer([TEXT_ONLY], return_tensors="pt")))
    else:
        encodings.append(processor(text=[TEXT_ONLY], return_tensors="pt"))
    return encodings


def model_inputs(encoding: Any) -> dict[str, torch.Tensor]:
    """transformers' inputs of one encoded prompt (its training labels dropped)."""
    return {name: value for name, value in encoding.items() if name != "labels"}


def forward_logits(hf: Any, encoding: Any, sequence: list[int]) -> torch.Tensor:
    """Every position's logits of the prompt of ``encoding`` followed by generated (text) tokens, from one forward."""
    ids = torch.tensor([sequence])
    inputs = {**model_inputs(encoding), "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if "mm_token_type_ids" in encoding:  # image tokens 1, text 0
        types = encoding["mm_token_type_ids"]
        inputs["mm_token_type_ids"] = torch.cat([types, types.new_zeros(1, len(sequence) - types.shape[1])], dim=1)
    with torch.no_grad():
        return hf(**inputs).logits[0]


def incremental_logits(hf: Any, encoding: Any, sequence: list[int]) -> torch.Tensor:
    """The last prompt position's logits, then each later token's from a forward over the KV cache (as ``generate``
    runs): the rows a last-logit bundle returns."""
    with torch.no_grad():
        output = hf(**model_inputs(encoding), use_cache=True)
        rows = [output.logits[0, -1]]
        for token in sequence[encoding["input_ids"].shape[1] :]:
            output = hf(input_ids=torch.tensor([[token]]), past_key_values=output.past_key_values, use_cache=True)
            rows.append(output.logits[0, -1])
    return torch.stack(rows)


def test_logits_and_greedy_tokens_match_transformers(env: dict[str, Any], hf: Any) -> None:
    """Two image prompts and a text-only one on the two rows (the third takes the row the first frees)."""
    encodings = encode_prompts(env)
    with torch.no_grad():
        greedy = [hf.generate(**model_inputs(enc), max_new_tokens=NEW_TOKENS, do_sample=False)[0].tolist() for enc in encodings]
    loaded = load_bundle(env["bundle"])
    backend = family_of(loaded.model_class).backend(loaded.model)
    assert type(backend) is env["arch"].backend and backend.batch_size == 2
    # a full-logit bundle: every position of one forward; a last-logit one (prefix-LMs): as generate runs
    reference_of = forward_logits if backend.full_logits else incremental_logits
    reference = [reference_of(hf, enc, sequence) for enc, sequence in zip(encodings, greedy)]
    collected: list[list[torch.Tensor]] = [[] for _ in encodings]
    programs = [with_images(teacher_forced(greedy[i], enc["input_ids"].shape[1], collected[i]), enc) for i, enc in enumerate(encodings)]
    run_programs(backend, programs)
    worst = 0.0
    for mine, ref in zip(collected, reference):
        assert len(mine) == len(ref)
        worst = max(worst, float((torch.stack(mine) - ref).abs().max()))
    print(f"{env['model_type']}: max |logit delta| {worst:.2e} ({'full' if backend.full_logits else 'last'} logits)")
    assert worst <= TOLERANCE, worst
    programs = [
        with_images(causal_greedy_program(backend, enc["input_ids"][0].tolist(), NEW_TOKENS, lambda t: False, frozenset()), enc)
        for enc in encodings
    ]
    answers = [sequence[enc["input_ids"].shape[1] :] for enc, sequence in zip(encodings, greedy)]
    assert run_programs(backend, programs) == answers
    assert answers[0] != answers[1]
    assert backend.counters.as_dict()["vision"]["calls"] == 4  # each image prompt twice (no content key: no reuse)


def reference_lm(env: dict[str, Any]) -> HFMultimodalReference:
    return HFMultimodalReference(pretrained=str(env["model_dir"]), dtype="float32", device="cpu", batch_size=1, **env["arch"].lm_args)


def evaluate(model: Any, tasks: Path, task: str, chat: bool = False) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=model, tasks=[task], log_samples=True, apply_chat_template=chat,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
    )


def responses(results: dict[str, Any], task: str) -> list[Any]:
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_generations_identical_to_the_reference(env: dict[str, Any], tasks: Path, chat: bool) -> None:
    reference = responses(evaluate(reference_lm(env), tasks, "vlm_gen", chat), "vlm_gen")
    vlm = open_lm(env["bundle"], **env["arch"].lm_args)  # a fresh model: chat templating is per model, as in hf
    results = evaluate(vlm, tasks, "vlm_gen", chat)
    ours = responses(results, "vlm_gen")
    print(f"{env['model_type']} {'chat' if chat else 'plain'} generations:", [r[0] for r in ours])
    assert len(ours) == len(reference) == 6
    assert ours == reference
    assert len({r[0][0] for r in reference}) > 1
    assert vlm.device_counters["vision"]["calls"] == 6  # one vision pass per document
    assert results["config"]["rbln"]["multimodal"] == {"model_type": env["model_type"], "image_token": env["arch"].image_string}


def mc_requests(tasks: Path) -> list[tuple[str, str, list]]:
    import json

    from PIL import Image

    requests = []
    for line in (tasks / "vlm_mc.jsonl").read_text().splitlines():
        doc = json.loads(line)
        images = [Image.open(tasks / name).convert("RGB") for name in doc["images"]]
        requests.extend((doc["context"], " " + choice, images) for choice in doc["choices"])
    return requests


def transformers_loglikelihood(
    hf: Any, processor: Any, model_type: str, image_string: str, context: str, continuation: str, images: list
) -> tuple[float, bool]:
    """Sum of log-probs of the continuation tokens after context + images (its ``<image>`` placeholders as
    ``image_string``), from one transformers forward; a prefix-LM's continuation is the processor's suffix."""
    context = context.replace("<image>", image_string)
    if model_type in PREFIX_LM_TYPES:
        whole = processor(images=[images], text=[context], suffix=[continuation], return_tensors="pt")
        suffix = whole["token_type_ids"][0].nonzero().flatten()[:-1]  # its end-of-sequence token is not scored
        first, end = int(suffix[0]), int(suffix[-1]) + 1
    else:
        whole = processor(images=[images], text=[context + continuation], return_tensors="pt")
        first = processor(images=[images], text=[context], return_tensors="pt")["input_ids"].shape[1]
        end = whole["input_ids"].shape[1]
    target = whole["input_ids"][0, first:end]
    with torch.no_grad():
        logits = hf(**model_inputs(whole)).logits[0]
    scored = torch.log_softmax(logits[first - 1 : end - 1].float(), dim=-1)
    return float(scored.gather(1, target[:, None]).sum()), bool((scored.argmax(-1) == target).all())


def test_multimodal_loglikelihood_matches_a_transformers_forward(env: dict[str, Any], hf: Any, tasks: Path) -> None:
    """Continuations of several tokens, teacher-forced after the prefill (the bundles keep last logits)."""
    from lm_eval.api.instance import Instance

    requests = [(context, choice + " of it", images) for context, choice, images in mc_requests(tasks)]
    # the first document's context and choices again with another document's image: scored apart, not shared
    first = [r for r in requests if r[0] == requests[0][0]]
    requests += [(context, choice, requests[-1][2]) for context, choice, _ in first]
    instances = [
        Instance("loglikelihood", doc={}, arguments=(c, x, {"visual": imgs}), idx=i) for i, (c, x, imgs) in enumerate(requests)
    ]
    vlm = open_lm(env["bundle"], **env["arch"].lm_args)
    ours = vlm.loglikelihood(instances, disable_tqdm=True)
    model_type, image_string = env["model_type"], env["arch"].image_string
    reference = [transformers_loglikelihood(hf, env["processor"], model_type, image_string, c, x, imgs) for c, x, imgs in requests]
    worst = max(abs(a[0] - b[0]) for a, b in zip(ours, reference))
    print(f"{model_type}: max |delta log-prob| over {len(requests)} multimodal requests: {worst:.2e}")
    assert worst <= TOLERANCE, worst
    assert [a[1] for a in ours] == [b[1] for b in reference]
    passes = len({id(images) for _, _, images in requests}) if model_type in FEATURE_TYPES else len(requests)
    assert vlm.device_counters["vision"]["calls"] == passes
    # the reference of `rbln-eval compare` scores the same requests the same way
    compared = reference_lm(env).loglikelihood(instances, disable_tqdm=True)
    assert max(abs(a[0] - b[0]) for a, b in zip(compared, reference)) <= 1e-5
    assert [a[1] for a in compared] == [b[1] for b in reference]
    same_text = ours[: len(first)], ours[-len(first) :]
    assert all(abs(a[0] - b[0]) > 1e-3 for a, b in zip(*same_text))


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


def test_a_full_logit_paligemma_is_refused_before_compiling(root: Path, tmp_path: Path) -> None:
    """optimum-rbln's prefill of a PaliGemma attends bidirectionally over the whole prompt."""
    store = tmp_path / "store"
    result = cli("compile", str(tiny_paligemma(str(root))), "--npu", "RBLN-CA25", "--store", str(store))
    line = one_line_exit_2(result, "--logits all with paligemma")
    assert line == (
        "error: --logits all with paligemma: optimum-rbln 0.12.0 prefills a prompt bidirectionally "
        "(optimum/rbln/transformers/models/decoderonly/decoderonly_architecture.py:AttentionOp.forward), so the logits "
        "of a prompt position see the tokens after it and score nothing: compile it with --logits last"
    )
    assert result.stdout == "" and not store.exists()
