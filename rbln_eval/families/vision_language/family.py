"""Image-text-to-text models (``RBLNAutoModelForImageTextToText``): a vision tower and projector feeding a causal
language model's prefill. Requests are a causal LM's plus images; they are scored by
:class:`~rbln_eval.families.vision_language.lm.VisionLanguageLM`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from rbln_eval.core.programs import Program, with_media
from rbln_eval.core.work import Work
from rbln_eval.families.base import CompileOptions
from rbln_eval.families.causal import CausalFamily
from rbln_eval.families.vision_language.backend import vision_language_backend
from rbln_eval.families.vision_language.compile import (
    KEY_ONLY_FIELDS,
    SCORED_VLM_TYPES,
    TEXT_SUBMODULES,
    complete_config,
    export_config,
    is_vision_language,
    save_processor,
    text_submodule,
    vlm_rbln_config,
)
from rbln_eval.families.vision_language.lm import VisionLanguageLM
from rbln_eval.families.vision_language.reference import multimodal_reference_lm


class VisionLanguageFamily(CausalFamily):
    """Image-text-to-text models: a causal LM whose prefill also takes image features."""

    name = "image-text-to-text"
    auto_class = "RBLNAutoModelForImageTextToText"
    transformers_mapping = "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES"
    reference_model = "hf-multimodal"
    lm_class = VisionLanguageLM
    hub_loadable = False  # its torch artifacts travel as safetensors: the loader rebuilds what optimum-rbln reads
    key_only_fields = KEY_ONLY_FIELDS
    priority = 1  # asked before the causal family: many of these configs are causal LMs too

    def backend(self, model: Any) -> Any:
        return vision_language_backend(model)

    def matches(self, model_config: Any) -> bool:
        return is_vision_language(model_config)

    def verified_types(self) -> list[str]:
        """The architectures ``rbln-vlm`` scores (the others compile and load, and are refused at scoring)."""
        return list(SCORED_VLM_TYPES)

    def rbln_config(self, options: CompileOptions, model_config: Any) -> dict[str, Any]:
        return complete_config(vlm_rbln_config(options, text_submodule(model_config)), model_config)

    def export_config(self, model_config: Any) -> Any | None:
        """The model config to hand optimum-rbln in place of the checkpoint's, with the fields it reads that
        transformers does not define (BLIP-2's ``vision_config.num_channels``); ``None``: the checkpoint's."""
        return export_config(model_config)

    def text_config(self, compile_config: Mapping[str, Any]) -> dict[str, Any]:
        fields = dict(compile_config)
        for nested in TEXT_SUBMODULES:  # the language model's settings
            if isinstance(fields.get(nested), dict):
                fields = {**fields, **{k: v for k, v in fields[nested].items() if k != "batch_size"}}
        return fields

    def save_extras(self, model_id: str, directory: Path, load_kwargs: dict[str, Any], log: Any) -> None:
        save_processor(model_id, directory, load_kwargs, log)

    def with_inputs(self, program: Program, work: Work) -> Program:
        if work.media is None:
            return program
        return with_media(program, work.media)

    def reference_lm(
        self, pretrained: str, revision: str | None, device: str, max_length: int | None, batch_size: int, **settings: Any,
    ) -> Any:
        return multimodal_reference_lm(pretrained, revision, device, max_length, **settings)
