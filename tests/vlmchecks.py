"""Checks shared by the vision-language tests: a tiny architecture compiled for the device, the programs that run
prompts on a backend, transformers' logits and log-likelihoods they are compared with, and lm_eval runs of the local
image tasks (:func:`vlmmodels.image_tasks`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generator

import torch

from rbln_eval.api import CompileOptions
from rbln_eval.build.workflow import compile_bundle, plan_compile
from rbln_eval.core.programs import Open, Step, with_media
from rbln_eval.core.work import Media
from rbln_eval.families.vision_language.compile import PREFIX_LM_TYPES
from rbln_eval.families.vision_language.processors import TOKEN_FIELDS, load_processor
from rbln_eval.families.vision_language.reference import HFMultimodalReference
from rbln_eval.store import Store
from vlmmodels import make_image

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
        """The images of the two device-level prompts."""
        return [make_image(seed).resize(size) for seed, size in enumerate(self.image_sizes)]

    def prompts(self) -> list[str]:
        """Two device-level prompts, each with one image: first and within the text."""
        if self.image_string == "<|image_pad|>":
            return QWEN_PROMPTS
        return [f"{self.image_string} The evaluation rules for the", f"Look at this: {self.image_string}\nThe result is then bound"]


def compile_tiny_model(model_type: str, build: Callable[[str], Path], options: CompileOptions, root: Path) -> dict[str, Any]:
    """Build a tiny model under ``root`` and compile it into ``root/store``: its model type, folder, bundle and
    processor (as ``rbln-vlm`` loads it)."""
    model_dir = build(str(root))
    started = time.perf_counter()
    bundle = compile_bundle(plan_compile(str(model_dir), options, npu="RBLN-CA25"), Store(root / "store")).bundle
    print(f"{model_type}: compiled in {time.perf_counter() - started:.1f} s")
    return {"model_type": model_type, "model_dir": model_dir, "bundle": bundle, "processor": load_processor(model_dir, model_type)}


def transformers_model(model_dir: Path) -> Any:
    """The float32 transformers model of ``model_dir``, in eval mode."""
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()


def teacher_forced(sequence: list[int], prompt_length: int, out: list[torch.Tensor]) -> Generator[Any, Any, None]:
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


def encode_prompts(processor: Any, model_type: str, arch: Architecture) -> list[Any]:
    """The two image prompts of ``arch`` (the processor's encoding) and a text-only one (a prefix-LM's processor
    takes no text-only prompt: its tokenizer's)."""
    pairs = zip(arch.images(), arch.prompts())
    encodings = [processor(images=[[image]], text=[text], return_tensors="pt") for image, text in pairs]
    if model_type in PREFIX_LM_TYPES:
        encodings.append(dict(processor.tokenizer([TEXT_ONLY], return_tensors="pt")))
    else:
        encodings.append(processor(text=[TEXT_ONLY], return_tensors="pt"))
    return encodings


def model_inputs(encoding: Any) -> dict[str, torch.Tensor]:
    """transformers' inputs of one encoded prompt (its training labels dropped)."""
    return {name: value for name, value in encoding.items() if name != "labels"}


def runner(hf: Any, encoding: Any) -> Any:
    """The transformers model that runs the prompt of ``encoding``: BLIP-2's ``forward`` and ``generate`` take no
    prompt without images (``pixel_values`` required), so a text-only prompt is its language model's, as on the
    device."""
    if "pixel_values" not in encoding and getattr(hf.config, "model_type", None) == "blip-2":
        return hf.language_model
    return hf


def forward_logits(hf: Any, encoding: Any, sequence: list[int]) -> torch.Tensor:
    """Every position's logits of the prompt of ``encoding`` followed by generated (text) tokens, from one forward."""
    hf = runner(hf, encoding)
    ids = torch.tensor([sequence])
    inputs = {**model_inputs(encoding), "input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for name in ("mm_token_type_ids", "token_type_ids"):  # image tokens 1, text 0
        if name in encoding:
            types = encoding[name]
            inputs[name] = torch.cat([types, types.new_zeros(1, len(sequence) - types.shape[1])], dim=1)
    with torch.no_grad():
        return hf(**inputs).logits[0]


def incremental_logits(hf: Any, encoding: Any, sequence: list[int]) -> torch.Tensor:
    """The last prompt position's logits, then each later token's from a forward over the KV cache (as ``generate``
    runs)."""
    with torch.no_grad():
        output = hf(**model_inputs(encoding), use_cache=True)
        rows = [output.logits[0, -1]]
        for token in sequence[encoding["input_ids"].shape[1] :]:
            output = hf(input_ids=torch.tensor([[token]]), past_key_values=output.past_key_values, use_cache=True)
            rows.append(output.logits[0, -1])
    return torch.stack(rows)


def bundle_reference_logits(hf: Any, encoding: Any, sequence: list[int], model_type: str, full_logits: bool) -> torch.Tensor:
    """transformers' logits of the rows a bundle returns over ``sequence``: a full-logit bundle's, every position of
    one forward; a last-logit one's, from the prompt's last position on: of one forward, or as ``generate`` runs for
    a prefix-LM (whose forward attends bidirectionally over the tokens the bundle decodes causally)."""
    if full_logits:
        return forward_logits(hf, encoding, sequence)
    if model_type in PREFIX_LM_TYPES:
        return incremental_logits(hf, encoding, sequence)
    return forward_logits(hf, encoding, sequence)[encoding["input_ids"].shape[1] - 1 :]


def reference_lm(model_dir: Path, **model_args: Any) -> HFMultimodalReference:
    """The reference ``rbln-eval compare`` uses (lm_eval's ``hf-multimodal``) on CPU in float32, batch 1."""
    return HFMultimodalReference(pretrained=str(model_dir), dtype="float32", device="cpu", batch_size=1, **model_args)


def evaluate(model: Any, tasks: Path, task: str, chat: bool = False) -> dict[str, Any]:
    """lm_eval's results of ``model`` on the local ``task`` of ``tasks``, with its samples."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=model, tasks=[task], log_samples=True, apply_chat_template=chat,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
    )


def responses(results: dict[str, Any], task: str) -> list[Any]:
    """The responses of ``task``'s samples, in document order."""
    return [s["resps"] for s in sorted(results["samples"][task], key=lambda s: s["doc_id"])]


def mc_requests(tasks: Path) -> list[tuple[str, str, list]]:
    """(context, continuation, images) of every choice of the local ``vlm_mc`` task's documents."""
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
    ``image_string``), and whether each is the greedy one, from one transformers forward; a prefix-LM's
    continuation is the processor's suffix."""
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
