"""Tiny image-text-to-text models built locally (seeded): no weights from a hub.

The LLaVA is a CLIP vision tower of 32 px images in 8 px patches, a two-layer MLP projector and,
as its language model, the embedded demo Llama (trained, so generations are text rather than noise) with one
added ``<image>`` token. The processor is transformers' ``LlavaProcessor`` over the demo tokenizer.
"""

from __future__ import annotations

import functools
from pathlib import Path

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


@functools.lru_cache(maxsize=None)
def tiny_llava(root: str) -> Path:
    """Save a tiny LLaVA (CLIP tower + the demo Llama) with its processor under ``root``; its path."""
    import torch
    from transformers import (
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = Path(root) / "tiny-llava-clip"
    if (out / "config.json").is_file():
        return out
    text_dir = demo.causal_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    base = LlamaForCausalLM.from_pretrained(text_dir)
    text_config = LlamaConfig(**{**base.config.to_dict(), "vocab_size": len(tokenizer), "tie_word_embeddings": False})
    strategy = "default"  # drops CLIP's CLS position
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE,
            patch_size=PATCH, projection_dim=32,
        ),
        text_config=text_config, image_token_index=image_token,
        vision_feature_select_strategy=strategy, vision_feature_layer=-1,
        image_seq_length=(IMAGE_SIZE // PATCH) ** 2, projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        embed = base.get_input_embeddings().weight
        model.get_input_embeddings().weight[: embed.shape[0]] = embed
        model.lm_head.weight[: embed.shape[0]] = base.lm_head.weight
        model.lm_head.weight[embed.shape[0] :] = 0.0
        loaded = model.model.language_model.load_state_dict(
            {k: v for k, v in base.model.state_dict().items() if not k.startswith("embed_tokens")}, strict=False
        )
        assert loaded.missing_keys == ["embed_tokens.weight"] and not loaded.unexpected_keys, loaded
        # Image features on the scale of the text embeddings, so images change the answer but do not drown it.
        model.model.multi_modal_projector.linear_2.weight.mul_(0.2)
    model.save_pretrained(out)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
        num_additional_image_tokens=1, vision_feature_select_strategy=strategy,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    base.generation_config.save_pretrained(out)
    return out


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


QWEN_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
QWEN_IMAGE = 16  # pixels a side: 4 x 4 patches of 4 px, merged 2 x 2 into 4 image tokens


@functools.lru_cache(maxsize=None)
def tiny_qwen2_vl(root: str) -> Path:
    """Save a tiny random Qwen2-VL (M-RoPE text model, 2-block vision tower) with its image processor and tokenizer.

    Its ``Qwen2VLProcessor`` is not saved: transformers builds it only with torchvision (for the video processor).
    Prompts are made with :func:`qwen_inputs` instead.
    """
    import torch
    from transformers import AutoTokenizer, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out = Path(root) / "tiny-qwen2-vl"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(demo.causal_model_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_TOKENS)})
    ids = [tokenizer.convert_tokens_to_ids(t) for t in QWEN_TOKENS]
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        # spatial_patch_size: read by optimum-rbln, present in the Hub's Qwen2-VL configs
        vision_config=dict(
            depth=2, embed_dim=32, num_heads=2, hidden_size=64, mlp_ratio=2, patch_size=4, spatial_patch_size=4,
            spatial_merge_size=2, temporal_patch_size=2, in_channels=3,
        ),
        vision_start_token_id=ids[0], vision_end_token_id=ids[1], image_token_id=ids[2], video_token_id=ids[3],
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).eval().save_pretrained(out)
    pixels = QWEN_IMAGE * QWEN_IMAGE
    Qwen2VLImageProcessorPil(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=pixels, max_pixels=pixels).save_pretrained(out)
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
