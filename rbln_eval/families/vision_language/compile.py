"""Compiling image-text-to-text models: detection, their rbln_config, the image settings in the key.

optimum-rbln compiles a vision-language model through ``RBLNAutoModelForImageTextToText`` into one bundle:
the vision tower, the projector and the language model (a submodule such as ``language_model`` for LLaVA,
Gemma3, Idefics3 — ``text_model`` there — and BLIP-2, or the model itself for Qwen2-VL). The language model always
takes input embeddings, since image features are scattered into them before prefill.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rbln_eval.errors import ConfigError
from rbln_eval.families.causal.family import causal_compile_options, refuse_local_attention_logits, sliding_window

if TYPE_CHECKING:
    from rbln_eval.families.base import CompileOptions

#: compile-config entries that only inform the key (and ``explain``), never passed to optimum-rbln.
#: optimum-rbln submodules that are the language model of a vision-language model.
TEXT_SUBMODULES = ("language_model", "text_model")
KEY_ONLY_FIELDS = ("image",)
#: Image settings that shape the vision graphs and the number of image tokens.
_IMAGE_FIELDS = ("image_size", "patch_size", "spatial_merge_size", "temporal_patch_size", "num_channels")
_TOP_IMAGE_FIELDS = (
    "vision_feature_select_strategy", "vision_feature_layer", "image_seq_length", "mm_tokens_per_image",
    "image_token_id", "image_token_index", "scale_factor", "num_query_tokens",
)
#: Architectures whose vision tower is compiled for a given number of patches per image (``visual.max_seq_len``).
PATCHES_PER_IMAGE_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
#: Architectures whose language model prefills image tokens with a graph of their own (optimum-rbln's image prefill).
IMAGE_PREFILL_TYPES = ("gemma3",)
#: Prefix-LM architectures: optimum-rbln prefills a whole prompt as one chunk attending bidirectionally, as
#: transformers attends over the prompt; decode steps (the continuation) attend causally.
PREFIX_LM_TYPES = ("paligemma",)
#: Where optimum-rbln's prefill attends bidirectionally (attention mask + position ids, no image prefill graph).
BIDIRECTIONAL_PREFILL = "optimum/rbln/transformers/models/decoderonly/decoderonly_architecture.py:AttentionOp.forward"
#: Architectures whose bundles rbln-eval scores with images (the others compile and load).
SCORED_VLM_TYPES = (
    "llava", "llava_next", "qwen2_vl", "qwen2_5_vl", "gemma3", "idefics3", "paligemma", "qwen3_vl", "blip-2",
)
#: Where optimum-rbln sizes a LLaVA's (and a LLaVA-NeXT's, per tile) image buffers at run time (not from the
#: rbln_config): the vision output as the patches plus a CLS position, the projector's output as the patches
#: only — while ``_update_rbln_config`` compiles the projector for the patches plus CLS under the "full" strategy.
LLAVA_IMAGE_BUFFERS = {
    "llava": "optimum/rbln/transformers/models/llava/modeling_llava.py:get_image_features",
    "llava_next": "optimum/rbln/transformers/models/llava_next/modeling_llava_next.py:get_image_features",
}
#: Where BLIP-2's processor puts a prompt's image: its query tokens before the text (before its BOS token),
#: ``num_query_tokens`` of them whatever the images, so a prompt takes one image and no placeholder in the text.
BLIP2_IMAGE_TOKENS = "transformers/models/blip_2/processing_blip_2.py:Blip2Processor.__call__"
#: Architectures whose processor places a prompt's image tokens itself: ``<image>`` placeholders are dropped from the
#: text (an image token left in it would be one more than the image's features).
PREPENDED_IMAGE_TYPES = {"blip-2": BLIP2_IMAGE_TOKENS}
#: Architectures whose prompts take one image only, and why (``{optimum}``, ``{transformers}``: the versions):
#: LLaVA-NeXT's ``get_image_features`` sizes the projector's output for every image's tiles as padded to the most
#: tiled image's count, then splits it by each image's own tiles, so two images tiled differently fail; BLIP-2's
#: processor gives a prompt one image's query tokens, whatever its images.
SINGLE_IMAGE_TYPES = {
    "llava_next": (
        f"optimum-rbln {{optimum}} takes one image per prompt ({LLAVA_IMAGE_BUFFERS['llava_next']} sizes the projector's "
        "output for the tiles of all images padded to the most tiled one's, then splits it by each image's own tiles)"
    ),
    "blip-2": (
        f"transformers {{transformers}}'s processor gives a prompt the query tokens of one image whatever its images "
        f"({BLIP2_IMAGE_TOKENS})"
    ),
}
#: Where transformers drops a LLaVA tower's first feature (its CLS position) under the "default" strategy.
LLAVA_DEFAULT_STRATEGY = "transformers/models/llava/modeling_llava.py:LlavaModel.get_image_features"
#: LLaVA vision towers whose output is the patches only (no CLS position), by ``vision_config.model_type``.
NO_CLS_TOWERS = {"siglip_vision_model": "SigLIP"}
#: LLaVA vision towers whose buffers follow ``vision_tower.max_image_size`` instead (padded patches; LLaVA only,
#: LLaVA-NeXT's buffers never do).
PADDED_TOWERS = ("pixtral",)
#: The vision towers (``vision_config.model_type``) ``rbln-vlm`` scores, by architecture; the architectures not named
#: here are scored with the one tower they have.
SCORED_TOWERS = {"llava": ("clip_vision_model", "pixtral"), "llava_next": ("clip_vision_model",)}
#: Config fields optimum-rbln reads at compile that transformers' configs do not define, by model type: (sub-config,
#: field, the value the architecture fixes, where optimum-rbln reads it). BLIP-2's vision embeddings always take 3
#: channels (transformers' ``Blip2VisionEmbeddings``: ``Conv2d(in_channels=3)``); rbln-eval sets the field on the
#: config it hands optimum-rbln (:func:`export_config`).
FIXED_CONFIG_FIELDS = {
    "blip-2": (
        "vision_config", "num_channels", 3,
        "optimum/rbln/transformers/models/blip_2/modeling_blip_2.py:RBLNBlip2VisionModel._update_rbln_config",
    ),
}
#: Architectures whose image features come through a Q-Former compiled by optimum-rbln (:func:`qformer_settings`).
QFORMER_TYPES = ("blip-2",)
#: Where optimum-rbln compiles BLIP-2's Q-Former for ``image_text_hidden_size`` + 1 image positions (its rbln_config's,
#: by default the model config's, a fusion width unrelated to them): rbln-eval passes the tower's patches.
QFORMER_IMAGE_POSITIONS = "optimum/rbln/transformers/models/blip_2/modeling_blip_2.py:RBLNBlip2QFormerModel._update_rbln_config"


def supported_vlm_types() -> list[str]:
    """Model types optimum-rbln compiles as image-text-to-text (needs the ``rebel`` SDK or the simulator)."""
    import optimum.rbln as rbln
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(
        t for t, name in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.items()
        if isinstance(name, str) and hasattr(rbln, f"RBLN{name}")
    )


def is_vision_language(config: Any) -> bool:
    """True for a config with a vision tower whose image-text-to-text class optimum-rbln compiles."""
    return getattr(config, "vision_config", None) is not None and getattr(config, "model_type", None) in supported_vlm_types()


def text_submodule(config: Any) -> str | None:
    """The optimum-rbln submodule that is the language model (``None``: the model itself is)."""
    import optimum.rbln as rbln
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    name = MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.get(getattr(config, "model_type", ""))
    config_cls = getattr(rbln, f"RBLN{name}Config", None)
    for candidate in getattr(config_cls, "submodules", None) or ():
        if candidate in TEXT_SUBMODULES:
            return candidate
    return None


def vlm_rbln_config(options: "CompileOptions", submodule: str | None) -> dict[str, Any]:
    """optimum-rbln's rbln_config for an image-text-to-text model: the options spelled as for a causal LM
    (:meth:`CompileOptions.shared_config`, :func:`causal_compile_options`), the language model's in its submodule
    (on input embeddings); the batch size and dtype also at the top, for the other submodules."""
    if submodule is None:
        config = text = options.shared_config()
    else:
        config = dict(options.extra)
        text = replace(options, extra=dict(config.get(submodule) or {}), dtype=None).shared_config()
        text.setdefault("use_inputs_embeds", True)
        config.update({name: getattr(options, name) for name in ("batch_size", "dtype") if getattr(options, name) is not None})
        config[submodule] = text
    for name, value in causal_compile_options(options.max_seq_len, options.logits).items():
        text[name] = value if name == "max_seq_len" else text.get(name, value)
    return config


def default_max_seq_len(config: Any) -> int | None:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None


def refuse_unrunnable(config: Any) -> None:
    """Raise :class:`ConfigError` for a LLaVA or LLaVA-NeXT that optimum-rbln compiles but whose first image
    would fail.

    optimum-rbln sizes the vision tower's and the projector's output buffers from the model's config alone
    (:data:`LLAVA_IMAGE_BUFFERS`), so no rbln_config changes them: a tower without a CLS position, or the "full"
    strategy keeping it, cannot run.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in SCORED_VLM_TYPES:
        raise ConfigError(
            f"{model_type}: rbln-vlm scores {', '.join(SCORED_VLM_TYPES)}; a {model_type} bundle would compile and "
            "load, then be refused at scoring",
            "compile it with optimum-rbln directly to use it outside rbln-eval",
        )
    if model_type not in LLAVA_IMAGE_BUFFERS:
        return
    import optimum.rbln
    import transformers

    vision = config.vision_config
    tower = getattr(vision, "model_type", None)
    if model_type == "llava" and tower in PADDED_TOWERS:
        if config.vision_feature_select_strategy != "full":
            raise ConfigError(
                f"vision_feature_select_strategy={config.vision_feature_select_strategy!r} with a {tower} tower: "
                f"transformers {transformers.__version__} drops the first of the tower's features "
                f"({LLAVA_DEFAULT_STRATEGY}), and a {tower} tower has no CLS position to drop, so the image features "
                "are one short of the processor's image tokens",
                "use a checkpoint with the 'full' strategy (as Pixtral's own)",
            )
        return
    version = optimum.rbln.__version__
    buffers = LLAVA_IMAGE_BUFFERS[model_type]
    patches = (vision.image_size // vision.patch_size) ** 2
    if tower in NO_CLS_TOWERS:
        name = NO_CLS_TOWERS[tower]
        article = "a LLaVA" if model_type == "llava" else "a LLaVA-NeXT"
        raise ConfigError(
            f"{article} with a {name} vision tower ({tower}): optimum-rbln {version} sizes the vision output for "
            f"{patches} patches + a CLS position ({buffers}), one more than the {patches} positions a "
            f"{name} tower outputs, so the bundle would fail on its first image",
            "use a checkpoint with a CLIP vision tower",
        )
    if tower not in NO_CLS_TOWERS and unscored_tower(config) is not None:
        scored = " or ".join(SCORED_TOWERS[model_type])
        raise ConfigError(
            f"a {model_type} with a {tower} vision tower: rbln-vlm scores a {model_type} with {scored} towers only",
            "use a checkpoint with one of those towers",
        )
    if config.vision_feature_select_strategy == "full":
        kind = "CLIP" if tower == "clip_vision_model" else str(tower)
        raise ConfigError(
            f"vision_feature_select_strategy='full' with a {kind} tower: optimum-rbln {version} compiles the projector "
            f"for {patches} patches + CLS but sizes its output for the {patches} patches only ({buffers}), "
            "so the CLS position does not fit",
            "use a checkpoint with the 'default' strategy",
        )


def unscored_tower(config: Any) -> str | None:
    """The vision tower of ``config`` when ``rbln-vlm`` does not score it with that architecture (:data:`SCORED_TOWERS`)."""
    towers = SCORED_TOWERS.get(getattr(config, "model_type", None) or "")
    tower = getattr(getattr(config, "vision_config", None), "model_type", None)
    return str(tower) if towers is not None and tower not in towers else None


def export_config(config: Any) -> Any | None:
    """``config`` with the fields optimum-rbln reads that transformers does not define (:data:`FIXED_CONFIG_FIELDS`)
    set to the architecture's values, to hand optimum-rbln in its place; ``None`` when none is missing."""
    fixed = FIXED_CONFIG_FIELDS.get(getattr(config, "model_type", None) or "")
    if fixed is None:
        return None
    part, name, value, _ = fixed
    sub_config = getattr(config, part)
    if getattr(sub_config, name, None) is not None:
        return None
    setattr(sub_config, name, value)
    return config


def qformer_settings(rbln_config: dict[str, Any], config: Any) -> None:
    """BLIP-2's Q-Former compiled for the vision tower's patches (:data:`QFORMER_IMAGE_POSITIONS`)."""
    vision = config.vision_config
    qformer = rbln_config.setdefault("qformer", {})
    qformer.setdefault("image_text_hidden_size", (vision.image_size // vision.patch_size) ** 2)


def complete_config(rbln_config: dict[str, Any], config: Any) -> dict[str, Any]:
    """Fill the default sequence length and record the image settings (``image``, key only).

    Refuses, before anything is compiled or stored, a model whose bundle could not run (:func:`refuse_unrunnable`).
    """
    refuse_unrunnable(config)
    model_type = getattr(config, "model_type", None)
    if model_type in PATCHES_PER_IMAGE_TYPES and not (rbln_config.get("visual") or {}).get("max_seq_len"):
        raise ConfigError(
            f"{model_type} needs its vision tower's patches per image at compile time: pass "
            """--rbln-config '{"visual": {"max_seq_len": N}}' with N at least the patches of the largest image """
            "(e.g. 6400 for 1120x1120 images in 14-pixel patches)"
        )
    submodule = text_submodule(config)
    text = rbln_config.setdefault(submodule, {}) if submodule else rbln_config
    length = default_max_seq_len(config)
    if length:
        text.setdefault("max_seq_len", length)
    if model_type in IMAGE_PREFILL_TYPES:
        image_prefill_settings(text, config)
    if model_type in QFORMER_TYPES:
        qformer_settings(rbln_config, config)
    if text.get("logits_to_keep") == 0 and sliding_window(config) is not None:
        refuse_local_attention_logits(str(model_type))  # its first prefill would fail
    if model_type in PREFIX_LM_TYPES and text.get("logits_to_keep") == 0:
        import optimum.rbln

        raise ConfigError(
            f"--logits all with {model_type}: optimum-rbln {optimum.rbln.__version__} prefills a prompt bidirectionally "
            f"({BIDIRECTIONAL_PREFILL}), so the logits of a prompt position see the tokens after it and score nothing",
            "compile it with --logits last",
        )
    rbln_config["image"] = image_settings(config)
    return rbln_config


def image_prefill_settings(text: dict[str, Any], config: Any) -> None:
    """Gemma3's language model settings: optimum-rbln compiles the text and the image prefill graphs for one chunk
    size, the image's (``mm_tokens_per_image``)."""
    text.setdefault("prefill_chunk_size", config.mm_tokens_per_image)


def image_settings(config: Any) -> dict[str, Any]:
    """The model's image settings that change the compiled graphs (image size, patching, feature layers)."""
    vision = getattr(config, "vision_config", None)
    settings: dict[str, Any] = {"model_type": getattr(vision, "model_type", None)}
    for name in _IMAGE_FIELDS:
        value = getattr(vision, name, None)
        if value is not None:
            settings[name] = value
    for name in _TOP_IMAGE_FIELDS:
        value = getattr(config, name, None)
        if value is not None:
            settings[name] = value
    return settings


#: The processor's own files (image processor, processor, chat template), copied when it cannot be built here.
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json", "chat_template.jinja", "chat_template.json")


def save_processor(model_id: str, directory: Path, load_kwargs: dict[str, Any], log: Any = None) -> None:
    """Make sure the bundle carries the processor (image processor, tokenizer, chat template).

    When transformers cannot build the processor on this machine (Qwen2-VL's needs torchvision for its video
    processor), its files are copied as they are, so the bundle is complete for the machines that run it.
    """
    if (directory / "processor_config.json").exists() or (directory / "preprocessor_config.json").exists():
        return
    from transformers import AutoProcessor

    try:
        AutoProcessor.from_pretrained(model_id, **load_kwargs).save_pretrained(directory)
        return
    except (ImportError, OSError, ValueError, TypeError) as exc:
        if log is not None:
            log.write(f"rbln-eval: the processor cannot be built here ({type(exc).__name__}: {exc}); copying its files\n")
    for name in PROCESSOR_FILES:
        if (directory / name).exists():
            continue
        local = Path(model_id) / name
        if local.is_file():
            (directory / name).write_bytes(local.read_bytes())
        elif not Path(model_id).is_dir():
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                path = hf_hub_download(model_id, name, revision=load_kwargs.get("revision"), token=load_kwargs.get("token"))
            except EntryNotFoundError:
                continue
            (directory / name).write_bytes(Path(path).read_bytes())

