"""Tiny image-text-to-text models built locally (seeded): no weights from a hub.

The LLaVA is a CLIP vision tower of 32 px images in 8 px patches, a two-layer MLP projector and,
as its language model, the embedded demo Llama (trained, so generations are text rather than noise) with one
added ``<image>`` token. The processor is transformers' ``LlavaProcessor`` over the demo tokenizer.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from rbln_eval import demo
from taskhelpers import JSONL_LOADER

IMAGE_SIZE = 32
PATCH = 8
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def splice_demo_llama(model: Any, base: Any, language_model: Any) -> None:
    """Put the demo Llama ``base`` into the image-text model ``model``: its token embeddings and ``lm_head`` as the
    first rows (the added tokens' ``lm_head`` rows zero), its decoder weights into ``language_model``."""
    import torch

    with torch.no_grad():
        embed = base.get_input_embeddings().weight
        model.get_input_embeddings().weight[: embed.shape[0]] = embed
        model.lm_head.weight[: embed.shape[0]] = base.lm_head.weight
        model.lm_head.weight[embed.shape[0] :] = 0.0
        loaded = language_model.load_state_dict(
            {k: v for k, v in base.model.state_dict().items() if not k.startswith("embed_tokens")}, strict=False
        )
    assert loaded.missing_keys == ["embed_tokens.weight"] and not loaded.unexpected_keys, loaded


def demo_llama_with_tokens(added_tokens: list[str]) -> tuple[Any, Any, Any]:
    """The demo tokenizer with ``added_tokens`` (special), the demo Llama, and the Llama's config for that
    vocabulary with untied embeddings: the language model of an image-text model, before :func:`splice_demo_llama`."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    text_dir = demo.causal_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": added_tokens})
    base = LlamaForCausalLM.from_pretrained(text_dir)
    text_config = LlamaConfig(**{**base.config.to_dict(), "vocab_size": len(tokenizer), "tie_word_embeddings": False})
    return tokenizer, base, text_config


def llava_with_demo_llama(model_class: type, config: Any, base: Any) -> Any:
    """A LLaVA-style ``model_class`` of ``config``, seeded random, with the demo Llama ``base`` as its language model
    (:func:`splice_demo_llama`) and its projector's output scaled to the text embeddings, so images change the answer
    but do not drown it."""
    import torch

    torch.manual_seed(0)
    model = model_class(config).eval()
    splice_demo_llama(model, base, model.model.language_model)
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.weight.mul_(0.2)
    return model


@functools.lru_cache(maxsize=None)
def tiny_llava(
    root: str, strategy: str = "default", image_size: int = IMAGE_SIZE, patch: int = PATCH, tower: str = "clip"
) -> Path:
    """Save a tiny LLaVA (CLIP tower + the demo Llama) with its processor under ``root``; its path.

    ``strategy`` (``vision_feature_select_strategy``), ``image_size``, ``patch`` and ``tower`` (``clip`` or
    ``siglip``: no CLS position, its processor adds no image token) make variants in their own directory.
    """
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        SiglipImageProcessor,
        SiglipVisionConfig,
    )

    variant = (strategy, image_size, patch, tower) != ("default", IMAGE_SIZE, PATCH, "clip")
    out = Path(root) / (f"tiny-llava-{tower}-{strategy}-{image_size}px-{patch}" if variant else "tiny-llava-clip")
    if (out / "config.json").is_file():
        return out
    tokenizer, base, text_config = demo_llama_with_tokens(["<image>"])
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    # "default" drops CLIP's CLS position; "full" keeps every position the tower outputs
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=image_size, patch_size=patch)
    vision_config = SiglipVisionConfig(**sizes) if tower == "siglip" else CLIPVisionConfig(**sizes, projection_dim=32)
    additional = 0 if tower == "siglip" else 1  # the CLS position
    image_tokens = (image_size // patch) ** 2 + additional - (1 if strategy == "default" else 0)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config, image_token_index=image_token,
        vision_feature_select_strategy=strategy, vision_feature_layer=-1,
        image_seq_length=image_tokens, projector_hidden_act="gelu",
    )
    llava_with_demo_llama(LlavaForConditionalGeneration, config, base).save_pretrained(out)
    if tower == "siglip":
        image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    else:
        image_processor = CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
        num_additional_image_tokens=additional, vision_feature_select_strategy=strategy,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    base.generation_config.save_pretrained(out)
    return out


def tiny_llava_siglip(root: str) -> Path:
    """A tiny LLaVA with a SigLIP tower (no CLS: strategy ``full``, no additional image token), 32 px in 8 px patches."""
    return tiny_llava(root, strategy="full", tower="siglip")


def make_image(seed: int, size: int = 48):
    """A deterministic RGB test image: coloured rectangles on a gradient."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    pixels = np.stack([(x * 5 + seed * 40) % 256, (y * 5) % 256, ((x + y) * 3) % 256], axis=-1).astype(np.uint8)
    for _ in range(3):
        x0, y0 = rng.integers(0, size - 8, 2)
        pixels[y0 : y0 + 8, x0 : x0 + 12] = rng.integers(0, 256, 3)
    return Image.fromarray(pixels, "RGB")


TASK_DATA = JSONL_LOADER + '''

from PIL import Image


def doc_to_image(doc):
    return [Image.open(HERE / name).convert("RGB") for name in doc["images"]]
'''

TASK_YAML = {
    "vlm_gen": """task: vlm_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: vlm_gen.jsonl
custom_dataset: !function vlm_data.load_local
output_type: generate_until
test_split: test
doc_to_image: !function vlm_data.doc_to_image
doc_to_text: "{{context}}"
doc_to_target: "{{target}}"
generation_kwargs:
  until:
    - "."
    - "\\n"
  do_sample: false
  temperature: 0.0
  max_gen_toks: 16
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
    "vlm_mc": """task: vlm_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: vlm_mc.jsonl
custom_dataset: !function vlm_data.load_local
output_type: multiple_choice
test_split: test
doc_to_image: !function vlm_data.doc_to_image
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
}


def image_tasks(root: str, docs: int = 6) -> Path:
    """A local lm_eval task directory: ``vlm_gen`` (generation) and ``vlm_mc`` (multiple choice), each doc
    with its own generated PNG image and an ``<image>`` placeholder in its prompt (the demo tasks' text)."""
    import json

    out = Path(root) / "vlm-tasks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vlm_data.py").write_text(TASK_DATA)
    source = demo.tasks_dir()
    for task, text_task in (("vlm_gen", "demo_gen"), ("vlm_mc", "demo_mc")):
        (out / f"{task}.yaml").write_text(TASK_YAML[task])
        lines = (source / f"{text_task}.jsonl").read_text(encoding="utf-8").splitlines()[:docs]
        with (out / f"{task}.jsonl").open("w", encoding="utf-8") as fh:
            for index, line in enumerate(lines):
                doc = json.loads(line)
                name = f"{task}-{index}.png"
                make_image(100 * len(task) + index).save(out / name)
                placement = "<image> " if index % 2 == 0 else "Image: <image>\n"
                doc.update(context=placement + doc["context"], images=[name])
                fh.write(json.dumps(doc) + "\n")
    return out


def small_text_config(tokenizer: Any, **settings: Any) -> dict[str, Any]:
    """The text config of a tiny random language model (2 layers of 64 units, 4 attention heads over 2 key-value
    heads, 256 positions) for ``tokenizer``'s vocabulary and special tokens; ``settings`` add to it or override it."""
    config = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return {**config, **settings}


QWEN_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_IMAGE = 16  # pixels a side: 4 x 4 patches of 4 px, merged 2 x 2 into 4 image tokens


def qwen_tokenizer() -> tuple[Any, dict[str, int]]:
    """The demo tokenizer with Qwen's vision tokens (:data:`QWEN_TOKENS`), and their ids as a Qwen-VL config's
    arguments."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(demo.causal_model_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_TOKENS)})
    ids = [tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS]
    return tokenizer, dict(vision_start_token_id=ids[0], vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3])


def save_qwen_image_processor(out: Path, image_size: int) -> None:
    """Save into ``out`` Qwen's image processor of ``image_size`` px square images in 4 px patches merged 2 x 2."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    pixels = image_size * image_size
    Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels).save_pretrained(out)


@functools.lru_cache(maxsize=None)
def tiny_qwen2_vl(root: str) -> Path:
    """Save a tiny random Qwen2-VL (M-RoPE text model, 2-block vision tower) with its image processor and tokenizer.

    Its ``Qwen2VLProcessor`` is not saved: transformers builds it only with torchvision (for the video processor).
    Prompts are made with :func:`qwen_inputs` instead.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    out = Path(root) / "tiny-qwen2-vl"
    if (out / "config.json").is_file():
        return out
    tokenizer, tokens = qwen_tokenizer()
    config = Qwen2VLConfig(
        text_config=small_text_config(tokenizer, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        # spatial_patch_size: read by optimum-rbln, present in the Hub's Qwen2-VL configs
        vision_config=dict(
            depth=2, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2, patch_size=4, spatial_patch_size=4,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
        ),
        **tokens,
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).eval().save_pretrained(out)
    save_qwen_image_processor(out, QWEN_IMAGE)
    tokenizer.save_pretrained(out)
    return out


def qwen_inputs(model_dir: Path, text: str, seed: int) -> dict:
    """Model inputs for ``text`` with one image where ``<image>`` stands (as Qwen2VLProcessor would expand it)."""
    import torch
    from transformers import AutoTokenizer
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    images = Qwen2VLImageProcessorPil.from_pretrained(model_dir)(images=[make_image(seed, QWEN_IMAGE)], return_tensors="pt")
    count = int(images["image_grid_thw"].prod()) // 4
    expanded = text.replace("<image>", "<|vision_start|>" + "<|image_pad|>" * count + "<|vision_end|>")
    input_ids = tokenizer(expanded, return_tensors="pt")["input_ids"]
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    return {
        "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == image_token).int(), **images,
    }


#: A Qwen-style chat template: each image part is the vision start, one image pad (the processor expands it) and
#: the vision end, as in the Hub's Qwen2-VL templates.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% else %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
QWEN_DEMO_IMAGE = 32  # pixels a side: 8 x 8 patches of 4 px, merged 2 x 2 into 16 image tokens


@functools.lru_cache(maxsize=None)
def tiny_qwen_vl(root: str, model_type: str = "qwen2_vl") -> Path:
    """Save a tiny Qwen2-VL or Qwen2.5-VL (``model_type``) whose language model is the demo Llama, with its image
    processor, tokenizer and chat template (``chat_template.jinja``, as the processor saves it).

    The demo Llama is a Qwen2 text model with zero q/k/v biases: M-RoPE gives text positions the Llama's RoPE, so
    generations are text. The vision tower is random (2 blocks, 4 px patches merged 2 x 2; Qwen2.5-VL's with
    16 px attention windows and its last block global); its features are scaled to the text embeddings.
    """
    import torch
    from transformers import (
        LlamaForCausalLM,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
    )

    out = Path(root) / f"tiny-{model_type.replace('_', '-')}-demo"
    if (out / "config.json").is_file():
        return out
    tokenizer, tokens = qwen_tokenizer()
    base = LlamaForCausalLM.from_pretrained(demo.causal_model_dir())
    llama = base.config
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=llama.hidden_size, intermediate_size=llama.intermediate_size,
        num_hidden_layers=llama.num_hidden_layers, num_attention_heads=llama.num_attention_heads,
        num_key_value_heads=llama.num_key_value_heads, max_position_embeddings=llama.max_position_embeddings,
        rms_norm_eps=llama.rms_norm_eps, rope_theta=llama.rope_parameters["rope_theta"],
        rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]},  # head_dim 32: 16 frequencies
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    # spatial_patch_size: read by optimum-rbln, present in the Hub's Qwen2-VL and Qwen2.5-VL configs
    vision = dict(
        depth=2, num_heads=2, patch_size=4, spatial_patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
    )
    if model_type == "qwen2_vl":
        vision_config = dict(vision, embed_dim=32, hidden_size=llama.hidden_size, mlp_ratio=2)
        config = Qwen2VLConfig(text_config=text_config, vision_config=vision_config, **tokens)
        model_class = Qwen2VLForConditionalGeneration
    else:
        vision_config = dict(
            vision, hidden_size=32, intermediate_size=64, out_hidden_size=llama.hidden_size, window_size=16,
            fullatt_block_indexes=[1],
        )
        config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config, **tokens)
        model_class = Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():
        language_model = model.model.language_model
        state = {k: v for k, v in base.model.state_dict().items() if not k.startswith("embed_tokens")}
        loaded = language_model.load_state_dict(state, strict=False)
        biases = [k for k in loaded.missing_keys if k.endswith("_proj.bias")]
        assert sorted(set(loaded.missing_keys) - set(biases)) == ["embed_tokens.weight"] and not loaded.unexpected_keys, loaded
        for name in biases:
            language_model.get_parameter(name).zero_()
        embed = base.get_input_embeddings().weight
        model.get_input_embeddings().weight.zero_()
        model.get_input_embeddings().weight[: embed.shape[0]] = embed
        model.lm_head.weight.zero_()
        model.lm_head.weight[: embed.shape[0]] = base.lm_head.weight
        merger = model.model.visual.merger.mlp[-1]
        merger.weight.mul_(3.0)
        merger.bias.zero_()
    model.save_pretrained(out)
    save_qwen_image_processor(out, QWEN_DEMO_IMAGE)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE)
    base.generation_config.save_pretrained(out)
    return out


GEMMA_TOKENS = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
#: A Gemma-style chat template: each image part is the start-of-image token (the processor expands it). No
#: generation prompt: the random Gemma3 repeats a prompt's last token, which is then each document's own.
GEMMA_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<image>", "<start_of_image>").replace("assistant:", "")
GEMMA_IMAGE = 32  # pixels a side: 8 x 8 patches of 4 px, 64 image tokens (no pooling)


@functools.lru_cache(maxsize=None)
def tiny_gemma3(root: str) -> Path:
    """Save a tiny random Gemma3 (SigLIP tower without its pooling head, as the Hub's Gemma3 configs) with its
    processor (PIL image processor, the demo tokenizer with Gemma3's image tokens, a chat template).

    Its language model alternates a sliding-window layer (a 64-token window, shorter than an image prompt) and a
    global one; an image is 64 tokens, optimum-rbln's image prefill chunk.
    """
    import torch
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    out = Path(root) / "tiny-gemma3"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(demo.causal_model_dir(), **GEMMA_TOKENS)
    tokenizer.add_special_tokens({"additional_special_tokens": list(GEMMA_TOKENS.values())})
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in GEMMA_TOKENS.items()}
    tokens = (GEMMA_IMAGE // 4) ** 2
    config = Gemma3Config(
        text_config=small_text_config(
            tokenizer, head_dim=16, query_pre_attn_scalar=16, sliding_window=64, layer_types=["sliding_attention", "full_attention"],
            initializer_range=0.2,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=GEMMA_IMAGE,
            patch_size=4, vision_use_head=False,
        ),
        mm_tokens_per_image=tokens, boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"],
    )
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # transformers initializes the projection to zeros: image features on the text's scale
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)
    model.save_pretrained(out)
    image_processor = Gemma3ImageProcessorPil(size={"height": GEMMA_IMAGE, "width": GEMMA_IMAGE})
    processor = Gemma3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=tokens, chat_template=GEMMA_CHAT_TEMPLATE
    )
    processor.save_pretrained(out)
    return out


IDEFICS_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{row}_col_{col}>" for row in range(1, 7) for col in range(1, 7)
]
IDEFICS_TILE = 32  # pixels a side of a tile: 8 x 8 patches of 4 px, shuffled 2 x 2 into 16 image tokens


@functools.lru_cache(maxsize=None)
def tiny_idefics3(root: str) -> Path:
    """Save a tiny Idefics3 whose language model is the demo Llama, with its processor (PIL image processor that
    splits an image into 2 x 2 tiles of 32 px plus the whole image, the demo tokenizer with Idefics3's tokens, the
    LLaVA chat template: Idefics3's image token is ``<image>`` too).

    Its vision tower and connector are random, the connector's output scaled to the text embeddings.
    """
    import torch
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    out = Path(root) / "tiny-idefics3"
    if (out / "config.json").is_file():
        return out
    tokenizer, base, text_config = demo_llama_with_tokens(IDEFICS_TOKENS)
    config = Idefics3Config(
        text_config=text_config,
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IDEFICS_TILE,
            patch_size=4,
        ),
        scale_factor=2, image_token_id=tokenizer.convert_tokens_to_ids("<image>"), pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = Idefics3ForConditionalGeneration(config).eval()
    with torch.no_grad():
        splice_demo_llama(model, base, model.model.text_model)
        model.model.connector.modality_projection.proj.weight.mul_(0.4)
    model.save_pretrained(out)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=True, size={"longest_edge": 2 * IDEFICS_TILE}, max_image_size={"longest_edge": IDEFICS_TILE}
    )
    tokens = (IDEFICS_TILE // 4 // 2) ** 2
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=tokens, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(out)
    base.generation_config.save_pretrained(out)
    return out


#: LLaVA-NeXT's resolutions an image is tiled at (pixels, in tiles of the 32 px the vision tower takes).
LLAVA_NEXT_GRID = [[32, 64], [64, 32], [64, 64]]


@functools.lru_cache(maxsize=None)
def tiny_llava_next(root: str) -> Path:
    """Save a tiny LLaVA-NeXT (CLIP tower of 32 px images in 8 px patches + the demo Llama) with its processor
    (PIL image processor: anyres tiling over :data:`LLAVA_NEXT_GRID` plus the whole image, the LLaVA chat template).

    The tower, projector and the image newline embedding are random, the projector's output scaled as LLaVA's.
    """
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    out = Path(root) / "tiny-llava-next"
    if (out / "config.json").is_file():
        return out
    tokenizer, base, text_config = demo_llama_with_tokens(["<image>"])
    vision_config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
        patch_size=PATCH, projection_dim=32,
    )
    config = LlavaNextConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default", vision_feature_layer=-1, image_grid_pinpoints=LLAVA_NEXT_GRID,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2, projector_hidden_act="gelu", tie_word_embeddings=False,
    )
    llava_with_demo_llama(LlavaNextForConditionalGeneration, config, base).save_pretrained(out)
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_grid_pinpoints=LLAVA_NEXT_GRID,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    base.generation_config.save_pretrained(out)
    return out
