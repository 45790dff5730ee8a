"""The device side of a vision-language bundle for :mod:`rbln_eval.core.programs`.

A prompt with images (:class:`ImagePrompt`) is prefilled from input embeddings: the vision tower and the
projector run on the device, their features replace the image tokens' embeddings (optimum-rbln's own
``_preprocess_prefill``), and the language model's prefill graph fills one batch row. Decode steps are the
language model's, over all rows at once, exactly as for a causal LM. Text-only prompts prefill from
token ids.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterator, Mapping, Sequence

import torch

from rbln_eval.families.causal.backend import CausalBackend
from rbln_eval.families.vision_language.compile import TEXT_SUBMODULES
from rbln_eval.core.programs import Open, Program

#: Image feature sets kept per backend (most recently used).
FEATURE_CACHE = 16


class ImagePrompt(Sequence[int]):
    """Prompt token ids plus the processor's image tensors (``pixel_values``, ``image_sizes``, …)."""

    def __init__(
        self, tokens: Sequence[int], image_inputs: Mapping[str, torch.Tensor], images: int, key: str | None = None
    ) -> None:
        self.tokens = list(tokens)
        self.image_inputs = dict(image_inputs)
        self.images = images
        self.key = key  # content identity of the images: their features are computed once

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: Any) -> Any:
        return self.tokens[index]

    def __iter__(self) -> Iterator[int]:
        return iter(self.tokens)


def vision_language_backend(model: Any) -> "CausalBackend":
    """The backend of a loaded vision-language model: its language model is a submodule, or the model itself
    is the decoder (M-RoPE)."""
    submodules = model.rbln_config.submodules
    if any(name in submodules for name in TEXT_SUBMODULES):
        return VisionLanguageBackend(model)
    return MultimodalRopeBackend(model)


def with_images(
    program: Program, image_inputs: Mapping[str, torch.Tensor], images: int, key: str | None = None
) -> Program:
    """``program`` whose prefill carries ``image_inputs`` (the tokens stay those the program asked for)."""
    request = next(program)
    if not isinstance(request, Open):
        raise RuntimeError(f"a program must open its row first, got {request!r}")
    value = yield Open(ImagePrompt(request.tokens, image_inputs, images, key))
    while True:
        try:
            request = program.send(value)
        except StopIteration as stop:
            return stop.value
        value = yield request


class VisionLanguageBackend(CausalBackend):
    """Prefill with image features + batched decode over a loaded ``RBLN…ForConditionalGeneration``."""

    reuses_prefix = False  # its prefill takes embeddings: a question's context is prefilled with each choice

    def __init__(self, model: Any) -> None:
        name = next(n for n in TEXT_SUBMODULES if n in model.rbln_config.submodules)
        self.vlm = model
        super().__init__(vars(model)[name] if name in vars(model) else getattr(model, name))
        self.model_type = getattr(model.config, "model_type", None)
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()

    def embed(self, prompt: ImagePrompt) -> torch.Tensor:
        """Input embeddings ``[1, L, hidden]`` of ``prompt``, image features in place of its image tokens.

        LLaVA's image features are kept per image content (the choices of one multiple-choice question share
        its image); other architectures go through optimum-rbln's ``_preprocess_prefill`` every time.
        """
        input_ids = torch.tensor([prompt.tokens], dtype=torch.long)
        with torch.no_grad():
            if self.model_type != "llava":
                self.counters.add("vision", prompt.images, prompt.images)
                return self.vlm._preprocess_prefill(input_ids=input_ids, **prompt.image_inputs)
            features = self._features.get(prompt.key) if prompt.key else None
            if features is None:
                config = self.vlm.config
                features = self.vlm.get_image_features(
                    pixel_values=prompt.image_inputs["pixel_values"],
                    vision_feature_layer=config.vision_feature_layer,
                    vision_feature_select_strategy=config.vision_feature_select_strategy,
                    image_sizes=prompt.image_inputs.get("image_sizes"),
                )
                self.counters.add("vision", prompt.images, prompt.images)
                if prompt.key:
                    self._features[prompt.key] = features
                    while len(self._features) > FEATURE_CACHE:
                        self._features.popitem(last=False)
            else:
                self._features.move_to_end(prompt.key)
            embeds = self.vlm.get_input_embeddings()(input_ids)
            mask = (input_ids == self.vlm.config.image_token_index).unsqueeze(-1)
            if int(mask.sum()) != features.numel() // features.shape[-1]:
                raise ValueError(
                    f"the prompt has {int(mask.sum())} image tokens for {features.numel() // features.shape[-1]} image features"
                )
            return embeds.masked_scatter(mask.expand_as(embeds), features.to(embeds.dtype))

    def open(self, row: int, tokens: Sequence[int]) -> torch.Tensor:
        if not isinstance(tokens, ImagePrompt):
            return super().open(row, tokens)
        cache_position = self.prefill_positions(len(tokens))
        embeds = self.embed(tokens)
        output = self.model.prefill_decoder(inputs_embeds=embeds, cache_position=cache_position, batch_idx=row)
        return self.prefill_logits(output, len(tokens))


class MultimodalRopeBackend(CausalBackend):
    """Qwen2-VL: the model is the decoder; positions are 3-D (M-RoPE) with a per-row offset after the prompt.

    Prefill computes each row's position embeddings and its ``rope_delta`` (optimum-rbln's
    ``_preprocess_prefill``); a decode step at position p of a row uses M-RoPE position p + delta there.
    """

    reuses_prefix = False  # each prefill computes the row's positions from the whole prompt

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.model_type = getattr(model.config, "model_type", None)
        self.rope_deltas = [0] * self.batch_size
        self.dtype = model.rbln_config.dtype

    def open(self, row: int, tokens: Sequence[int]) -> torch.Tensor:
        cache_position = self.prefill_positions(len(tokens))
        input_ids = torch.tensor([list(tokens)], dtype=torch.long)
        mask = torch.ones_like(input_ids)
        images = tokens.image_inputs if isinstance(tokens, ImagePrompt) else {}
        with torch.no_grad():
            embeds, position_embed, deltas = self.model._preprocess_prefill(
                input_ids, mask, images.get("pixel_values"), None, images.get("image_grid_thw"), None,
                mm_token_type_ids=images.get("mm_token_type_ids"),
            )
        if isinstance(tokens, ImagePrompt):
            self.counters.add("vision", tokens.images, tokens.images)
        self.rope_deltas[row] = int(deltas.flatten()[0])
        output = self.model.prefill_decoder(
            inputs_embeds=embeds, attention_mask=mask[0], cache_position=cache_position, batch_idx=row,
            position_embed=position_embed,
        )
        return self.prefill_logits(output, len(tokens))

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        if max(positions) >= self.max_length:
            raise ValueError(f"decode position {max(positions)} is beyond the compiled length {self.max_length}")
        input_ids = torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1)
        cache_position = torch.tensor(list(positions), dtype=torch.int32).unsqueeze(1)
        with torch.no_grad():
            embeds = self.model.embed_tokens(input_ids)
            rows = []
            for row, position in enumerate(positions):
                ids = torch.full((3, 1, 1), position + self.rope_deltas[row], dtype=torch.long)
                rows.append(self.model._get_position_embeddings(torch.zeros(1, dtype=self.dtype), ids))
        output = self.decoder(inputs_embeds=embeds, cache_position=cache_position, position_embed=torch.cat(rows, dim=1))
        self.counters.add("decode", 1, self.batch_size)
        return output.logits[:, -1, :]
