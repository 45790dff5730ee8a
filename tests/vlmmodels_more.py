"""More tiny image-text-to-text models built locally (seeded): PaliGemma, Qwen3-VL, BLIP-2, a LLaVA with a Pixtral
tower. Each is random unless its docstring says otherwise, with small images and a processor saved beside it."""

from __future__ import annotations

import functools
from pathlib import Path

from rbln_eval import demo
from vlmmodels import CHAT_TEMPLATE, demo_llama_with_tokens, llava_with_demo_llama, small_text_config

PALIGEMMA_IMAGE = 32  # pixels a side: 4 x 4 patches of 8 px, 16 image tokens
PALIGEMMA_MAX_LENGTH = 128  # the language model's positions: its one prefill chunk holds a whole prompt


@functools.lru_cache(maxsize=None)
def tiny_paligemma(root: str) -> Path:
    """Save a tiny random PaliGemma (SigLIP tower without its pooling head + a Gemma language model) with its
    processor (SigLIP image processor, the demo tokenizer with PaliGemma's image and location tokens, the LLaVA
    chat template: PaliGemma's image token is ``<image>`` too)."""
    import torch
    from transformers import AutoTokenizer, PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    out = Path(root) / "tiny-paligemma"
    if (out / "config.json").is_file():
        return out
    tokens = (PALIGEMMA_IMAGE // 8) ** 2
    image_processor = SiglipImageProcessor(size={"height": PALIGEMMA_IMAGE, "width": PALIGEMMA_IMAGE}, image_seq_length=tokens)
    tokenizer = AutoTokenizer.from_pretrained(demo.causal_model_dir())
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    config = PaliGemmaConfig(
        text_config=small_text_config(
            tokenizer, model_type="gemma", head_dim=16, max_position_embeddings=PALIGEMMA_MAX_LENGTH, initializer_range=0.2,
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=PALIGEMMA_IMAGE,
            patch_size=8, vision_use_head=False, num_image_tokens=tokens,  # as in the Hub's PaliGemma configs
        ),
        image_token_index=processor.image_token_id, vocab_size=len(tokenizer), projection_dim=64, hidden_size=64,
    )
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


QWEN3_IMAGE = 32  # pixels a side: 8 x 8 patches of 4 px, merged 2 x 2 into 16 image tokens


@functools.lru_cache(maxsize=None)
def tiny_qwen3_vl(root: str) -> Path:
    """Save a tiny random Qwen3-VL (2 vision blocks of 4 px patches merged 2 x 2, the first also feeding the language
    model's first layer — deepstack —, a 2-layer Qwen3 language model with interleaved M-RoPE) with its image
    processor, the demo tokenizer with Qwen's vision tokens, and the Qwen chat template."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from vlmmodels import QWEN_CHAT_TEMPLATE, qwen_tokenizer, save_qwen_image_processor

    out = Path(root) / "tiny-qwen3-vl"
    if (out / "config.json").is_file():
        return out
    tokenizer, tokens = qwen_tokenizer()
    config = Qwen3VLConfig(
        text_config=small_text_config(
            tokenizer, head_dim=16, initializer_range=0.2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True},
        ),
        vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=4, spatial_merge_size=2,
            temporal_patch_size=2, out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0],
        ),
        **tokens,
    )
    torch.manual_seed(0)
    model = Qwen3VLForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    save_qwen_image_processor(out, QWEN3_IMAGE)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(QWEN_CHAT_TEMPLATE)
    return out


BLIP2_IMAGE = 32  # pixels a side, in 8 px patches: 16 patches + CLS enter the Q-Former
BLIP2_QUERIES = 8  # Q-Former query tokens: the image tokens of a prompt
#: The LLaVA chat template without image entries: BLIP-2's processor puts a prompt's image tokens first itself.
BLIP2_CHAT_TEMPLATE = CHAT_TEMPLATE.replace("<image>", "")


@functools.lru_cache(maxsize=None)
def tiny_blip2(root: str) -> Path:
    """Save a tiny random BLIP-2 (a 2-layer vision tower, a 2-layer Q-Former of 8 queries, a 2-layer OPT language
    model; weights of std 0.2 so that images change answers) with its processor (BLIP image processor, the demo
    tokenizer with an ``<image>`` token, :data:`BLIP2_CHAT_TEMPLATE`). Its config keeps transformers' defaults
    elsewhere: no ``vision_config.num_channels``, an ``image_text_hidden_size`` (256) unrelated to its 16 patches."""
    import torch
    from transformers import AutoTokenizer, Blip2Config, Blip2ForConditionalGeneration, Blip2Processor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    out = Path(root) / "tiny-blip2"
    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(demo.causal_model_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    config = Blip2Config(
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=BLIP2_IMAGE, patch_size=8,
        ),
        qformer_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, encoder_hidden_size=32,
            vocab_size=len(tokenizer),
        ),
        text_config=dict(
            model_type="opt", vocab_size=len(tokenizer), hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256, word_embed_proj_dim=64, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, init_std=0.2,
        ),
        num_query_tokens=BLIP2_QUERIES, image_token_index=tokenizer.convert_tokens_to_ids("<image>"), initializer_range=0.2,
    )
    assert not hasattr(config.vision_config, "num_channels")
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    image_processor = BlipImageProcessorPil(size={"height": BLIP2_IMAGE, "width": BLIP2_IMAGE})
    processor = Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=BLIP2_QUERIES, chat_template=BLIP2_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


PIXTRAL_TOKENS = ["[IMG]", "[IMG_BREAK]", "[IMG_END]"]
PIXTRAL_IMAGE = 32  # pixels of an image's longest edge (and the tower's image size): up to 4 x 4 patches of 8 px


@functools.lru_cache(maxsize=None)
def tiny_llava_pixtral(root: str) -> Path:
    """Save a tiny LLaVA with a Pixtral vision tower (2 layers, 8 px patches, 2-D rotary positions; the "full"
    strategy of the last layer, as Pixtral-12B) and the demo Llama, with its processor: images keep their aspect
    ratio (longest edge 32 px), each patch an ``[IMG]`` token, rows ended by ``[IMG_BREAK]``, the image by
    ``[IMG_END]``. The processor is saved as ``PixtralProcessor``, which transformers cannot import without
    torchvision; the tower and projector are random, the projector's output scaled as LLaVA's."""
    import json

    from transformers import LlavaConfig, LlavaForConditionalGeneration, PixtralVisionConfig
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    from rbln_eval.families.vision_language.processors import PixtralImageTextProcessor

    out = Path(root) / "tiny-llava-pixtral"
    if (out / "config.json").is_file():
        return out
    tokenizer, base, text_config = demo_llama_with_tokens(PIXTRAL_TOKENS)
    vision_config = PixtralVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, head_dim=16,
        image_size=PIXTRAL_IMAGE, patch_size=8,
    )
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"),
        vision_feature_select_strategy="full", vision_feature_layer=-1, projector_hidden_act="gelu", tie_word_embeddings=False,
    )
    llava_with_demo_llama(LlavaForConditionalGeneration, config, base).save_pretrained(out)
    image_processor = PixtralImageProcessorPil(size={"longest_edge": PIXTRAL_IMAGE}, patch_size=8)
    processor = PixtralImageTextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=8, chat_template=CHAT_TEMPLATE.replace("<image>", "[IMG]")
    )
    processor.save_pretrained(out)
    settings = out / "processor_config.json"  # as the Hub's Pixtral checkpoints name it
    settings.write_text(json.dumps({**json.loads(settings.read_text()), "processor_class": "PixtralProcessor"}, indent=2))
    base.generation_config.save_pretrained(out)
    return out


#: Where each document of the two-image tasks puts its images: both first, interleaved with text, around the text.
TWO_IMAGE_PLACEMENTS = (
    "<image> <image> {context}",
    "First: <image>\nSecond: <image>\n{context}",
    "Compare <image> with <image>: {context}",
    "<image>\n{context} (see also <image>)",
)


def two_image_tasks(root: str) -> Path:
    """A local lm_eval task directory: ``vlm2_gen`` (generation, 8 new tokens) and ``vlm2_mc`` (multiple choice), one
    document per :data:`TWO_IMAGE_PLACEMENTS`, each with two generated PNG images of its own (the demo tasks' text)."""
    import json

    from vlmmodels import TASK_DATA, TASK_YAML, make_image

    out = Path(root) / "vlm2-tasks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "vlm_data.py").write_text(TASK_DATA)
    source = demo.tasks_dir()
    for task, text_task in (("vlm2_gen", "demo_gen"), ("vlm2_mc", "demo_mc")):
        single = task.replace("vlm2", "vlm")
        (out / f"{task}.yaml").write_text(TASK_YAML[single].replace(single, task).replace("max_gen_toks: 16", "max_gen_toks: 8"))
        lines = (source / f"{text_task}.jsonl").read_text(encoding="utf-8").splitlines()[: len(TWO_IMAGE_PLACEMENTS)]
        with (out / f"{task}.jsonl").open("w", encoding="utf-8") as fh:
            for index, (line, placement) in enumerate(zip(lines, TWO_IMAGE_PLACEMENTS)):
                doc = json.loads(line)
                names = [f"{task}-{index}-{n}.png" for n in range(2)]
                for n, name in enumerate(names):
                    make_image(1000 + 10 * index + n + 500 * (task == "vlm2_mc")).save(out / name)
                doc.update(context=placement.format(context=doc["context"]), images=names)
                fh.write(json.dumps(doc) + "\n")
    return out
