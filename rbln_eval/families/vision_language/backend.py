"""The device side of a vision-language bundle for :mod:`rbln_eval.core.programs`.

A prompt with images (a :class:`~rbln_eval.core.work.MediaPrompt`) is prefilled from input embeddings: the vision
tower and the projector run on the device, their features replace the image tokens' embeddings (optimum-rbln's own
``_preprocess_prefill``, or the backend's where it keeps features per image), and the language model's prefill
graph fills one batch row. Decode steps are the language model's, over all rows at once, exactly as for a causal
LM. Text-only prompts prefill from token ids. Three kinds of bundle (:func:`vision_language_backend`):

- :class:`VisionLanguageBackend`: a language model submodule (LLaVA, LLaVA-NeXT, Idefics3);
- :class:`ImagePrefillBackend`: one whose image tokens have a prefill graph of their own (Gemma3);
- :class:`PrefixLMBackend`: one that prefills a whole prompt bidirectionally, decode steps causal (PaliGemma);
- :class:`MultimodalRopeBackend`: the model is the decoder, with 3-D rotary positions (Qwen2-VL, Qwen2.5-VL,
  Qwen3-VL, whose vision features also enter its first layers: deepstack).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping, Sequence

import torch

from rbln_eval.families.causal.backend import CausalBackend
from rbln_eval.families.vision_language.compile import TEXT_SUBMODULES
from rbln_eval.core.work import MediaPrompt

#: Image feature sets kept per backend (most recently used).
FEATURE_CACHE = 16
#: Architectures whose image features the backend computes itself, once per image content.
FEATURE_TYPES = ("llava", "gemma3", "paligemma")
#: optimum-rbln's Gemma3 image features, which :class:`ImagePrefillBackend` does not use (see there).
GEMMA3_IMAGE_FEATURES = "optimum/rbln/transformers/models/gemma3/modeling_gemma3.py:get_image_features"


def vision_language_backend(model: Any) -> "CausalBackend":
    """The backend of a loaded vision-language model: its language model is a submodule (with an image prefill
    graph: Gemma3), or the model itself is the decoder (M-RoPE)."""
    submodules = model.rbln_config.submodules
    if not any(name in submodules for name in TEXT_SUBMODULES):
        return MultimodalRopeBackend(model)
    text = next(getattr(model.rbln_config, name) for name in TEXT_SUBMODULES if name in submodules)
    if getattr(text, "use_image_prefill", False):
        return ImagePrefillBackend(model)
    if getattr(text, "use_bidirectional_prefill", False):
        return PrefixLMBackend(model)
    return VisionLanguageBackend(model)


class VisionLanguageBackend(CausalBackend):
    """Prefill with image features + batched decode over a loaded ``RBLN…ForConditionalGeneration``."""

    reuses_prefix = False  # its prefill takes embeddings: a question's context is prefilled with each choice

    def __init__(self, model: Any) -> None:
        name = next(n for n in TEXT_SUBMODULES if n in model.rbln_config.submodules)
        self.vlm = model
        super().__init__(vars(model)[name] if name in vars(model) else getattr(model, name))
        self.model_type = getattr(model.config, "model_type", None)
        self._features: OrderedDict[str, torch.Tensor] = OrderedDict()

    def embed(self, prompt: MediaPrompt) -> torch.Tensor:
        """Input embeddings ``[1, L, hidden]`` of ``prompt``, image features in place of its image tokens.

        LLaVA's and Gemma3's image features are kept per image content (the choices of one multiple-choice
        question share its image); other architectures go through optimum-rbln's ``_preprocess_prefill`` every time.
        """
        input_ids = torch.tensor([prompt.tokens], dtype=torch.long)
        with torch.no_grad():
            media = prompt.media
            if self.model_type not in FEATURE_TYPES:
                self.counters.add("vision", media.count, media.count)
                return self.vlm._preprocess_prefill(input_ids=input_ids, **media.inputs)
            features = self._features.get(media.key) if media.key else None
            if features is None:
                features = self.image_features(media.inputs)
                self.counters.add("vision", media.count, media.count)
                if media.key:
                    self._features[media.key] = features
                    while len(self._features) > FEATURE_CACHE:
                        self._features.popitem(last=False)
            else:
                self._features.move_to_end(media.key)
            mask = (input_ids == self.vlm.config.image_token_index).unsqueeze(-1)
            embeds = self.token_embeddings(input_ids)
            if int(mask.sum()) != features.numel() // features.shape[-1]:
                raise ValueError(
                    f"the prompt has {int(mask.sum())} image tokens for {features.numel() // features.shape[-1]} image features"
                )
            return embeds.masked_scatter(mask.expand_as(embeds), features.to(embeds.dtype))

    def token_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The language model's embeddings of ``input_ids``; ids beyond its vocabulary (an image token outside
        it) embed as id 0, as optimum-rbln's Gemma3 ``_preprocess_prefill`` does — image features replace them."""
        embedding = self.vlm.get_input_embeddings()
        return embedding(input_ids.masked_fill(input_ids >= embedding.num_embeddings, 0))

    def image_features(self, image_inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The projected features of a prompt's images (LLaVA: optimum-rbln's ``get_image_features``)."""
        config = self.vlm.config
        return self.vlm.get_image_features(
            pixel_values=image_inputs["pixel_values"],
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            image_sizes=image_inputs.get("image_sizes"),
        )

    def open(self, row: int, tokens: Sequence[int]) -> torch.Tensor:
        if not isinstance(tokens, MediaPrompt):
            return super().open(row, tokens)
        cache_position = self.prefill_positions(len(tokens))
        embeds = self.embed(tokens)
        output = self.model.prefill_decoder(inputs_embeds=embeds, cache_position=cache_position, batch_idx=row)
        return self.prefill_logits(output, len(tokens))


class MultimodalRopeBackend(CausalBackend):
    """Qwen2-VL, Qwen2.5-VL, Qwen3-VL: the model is the decoder; positions are 3-D (M-RoPE) with a per-row offset after
    the prompt.

    Prefill computes the row's input embeddings, position embeddings and ``rope_delta``
    (:meth:`prefill_inputs`); a decode step at position p of a row uses M-RoPE position p + delta there.
    """

    reuses_prefix = False  # each prefill computes the row's positions from the whole prompt

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.model_type = getattr(model.config, "model_type", None)
        self.rope_deltas = [0] * self.batch_size
        self.dtype = model.rbln_config.dtype

    def prefill_inputs(self, input_ids: torch.Tensor, images: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int, dict[str, Any]]:
        """Input embeddings (image features in place of the image tokens), position embeddings, rope delta and the
        prefill's deepstack inputs (Qwen3-VL) of one prompt ``[1, L]``, as transformers computes them.

        optimum-rbln's ``_preprocess_prefill`` does the same for a batch, but counts each row's images by their
        ``<|vision_start|>`` tokens; a prompt whose images are bare image tokens (hf-multimodal's default
        placeholder) would get none. One row holds all ``images``, so they are taken as they are.
        """
        model = self.model
        embeds = model.embed_tokens(input_ids)
        image_tokens = input_ids == model.config.image_token_id
        grid = images.get("image_grid_thw")
        deepstack: dict[str, Any] = {}
        if images.get("pixel_values") is not None:
            features = model.visual(images["pixel_values"], grid_thw=grid)
            if isinstance(features, tuple):  # Qwen3-VL: also the features added to the first layers' outputs
                features, layers = features
                stacked = torch.zeros(len(layers), input_ids.shape[1], embeds.shape[-1], dtype=self.dtype)
                stacked[:, image_tokens[0]] = torch.stack(layers).to(self.dtype)
                deepstack = {"visual_pos_mask": image_tokens, "deepstack_embeds": stacked}
            if int(image_tokens.sum()) != features.shape[0]:
                raise ValueError(f"the prompt has {int(image_tokens.sum())} image tokens for {features.shape[0]} image features")
            embeds = embeds.masked_scatter(image_tokens.unsqueeze(-1).expand_as(embeds), features.to(embeds.dtype))
        position_ids, deltas = model._get_rope_index_func(input_ids, image_tokens.int(), grid, None)
        return embeds, model._get_position_embeddings(embeds, position_ids), int(deltas.flatten()[0]), deepstack

    def open(self, row: int, tokens: Sequence[int]) -> torch.Tensor:
        cache_position = self.prefill_positions(len(tokens))
        input_ids = torch.tensor([list(tokens)], dtype=torch.long)
        mask = torch.ones_like(input_ids)
        images = tokens.media.inputs if isinstance(tokens, MediaPrompt) else {}
        with torch.no_grad():
            embeds, position_embed, self.rope_deltas[row], deepstack = self.prefill_inputs(input_ids, images)
        if isinstance(tokens, MediaPrompt):
            self.counters.add("vision", tokens.media.count, tokens.media.count)
        output = self.model.prefill_decoder(
            inputs_embeds=embeds, attention_mask=mask[0], cache_position=cache_position, batch_idx=row,
            position_embed=position_embed, **deepstack,
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


class ImagePrefillBackend(VisionLanguageBackend):
    """Gemma3: image tokens are prefilled by their own graph (bidirectional among them), text by the text graph.

    optimum-rbln packs the prefill chunks of a prompt one after the other in its row's KV cache, and pads where a
    chunk would cross a cache partition: the row's cache holds ``padded_cache_lengths`` more slots than the
    prompt has tokens. A decode step at position p of the row writes slot p + padding (its rotary position stays
    p), and attends to the slots the prefill filled (its attention mask) and those its steps wrote since.

    The image features are computed here (:meth:`image_features`): optimum-rbln's ``get_image_features``
    (:data:`GEMMA3_IMAGE_FEATURES`) runs the projector one image at a time while it is compiled for the batch
    size, and gives the vision tower one output buffer while a tower with its pooling head has two outputs.
    """

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.padding = [0] * self.batch_size
        self.prompt_slots = [0] * self.batch_size  # cache slots each row's prefill filled (padding included)
        self.prefill_masks = torch.zeros_like(self.decoder.dec_attn_mask)  # [batch, max_seq_len]

    def image_features(self, image_inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[images, tokens per image, hidden]``: the vision tower one image at a time, the projector on up to its
        compiled batch of images at a time (padded)."""
        pixels = image_inputs["pixel_values"].to(self.vlm.rbln_config.vision_tower.dtype)
        tower = self.vlm.rbln_submodules[0]
        hidden = torch.cat([tower(pixels[i : i + 1]).last_hidden_state for i in range(pixels.shape[0])])
        projector, rows = self.vlm.model[0], int(self.vlm.rbln_config.batch_size)
        features = []
        for start in range(0, hidden.shape[0], rows):
            part = hidden[start : start + rows].to(self.vlm.rbln_config.dtype)
            padded = torch.cat([part, part.new_zeros(rows - part.shape[0], *part.shape[1:])])
            features.append(projector(padded)[: part.shape[0]])
        return torch.cat(features)

    def open(self, row: int, tokens: Sequence[int]) -> torch.Tensor:
        cache_position = self.prefill_positions(len(tokens))
        input_ids = torch.tensor([list(tokens)], dtype=torch.long)
        with torch.no_grad():
            embeds = self.embed(tokens) if isinstance(tokens, MediaPrompt) else self.token_embeddings(input_ids)
        token_types = (input_ids == self.vlm.config.image_token_index).int()
        output = self.model.prefill_decoder(
            inputs_embeds=embeds, attention_mask=torch.ones(len(tokens), dtype=torch.long), cache_position=cache_position,
            batch_idx=row, token_type_ids=token_types,
        )
        self.padding[row] = int(output.padded_cache_lengths)
        self.prompt_slots[row] = len(tokens) + self.padding[row]
        self.prefill_masks[row] = output.attention_mask.reshape(-1)
        return self.prefill_logits(output, len(tokens))

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        slots = [position + padding if on else 0 for position, padding, on in zip(positions, self.padding, active)]
        if max(slots) >= self.max_length:
            raise ValueError(f"decode cache slot {max(slots)} is beyond the compiled length {self.max_length}")
        mask = self.prefill_masks.clone()
        for row, slot in enumerate(slots):
            mask[row, self.prompt_slots[row] : slot + 1] = 1
        input_ids = torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1)
        output = self.decoder(
            input_ids=input_ids, cache_position=torch.tensor(slots, dtype=torch.int32).unsqueeze(1),
            position_ids=torch.tensor(list(positions), dtype=torch.int32).unsqueeze(1), attention_mask=mask,
        )
        self.counters.add("decode", 1, self.batch_size)
        return output.logits[:, -1, :]


class PrefixLMBackend(VisionLanguageBackend):
    """PaliGemma: a prompt (the prefix: images and text) is prefilled as one chunk attending bidirectionally, as
    transformers attends over it; decode steps attend causally. Position ids are the cache positions, from 0, as
    optimum-rbln's prefill takes them: rotary attention depends on differences of positions only, so they give the
    logits of transformers' PaliGemma, which counts from 1.

    The image features are computed here (:meth:`image_features`): optimum-rbln's ``get_image_features`` sizes the
    tower's output by ``vision_config.num_image_tokens``, which a config may lack; the tower's patches are the same.
    """

    def image_features(self, image_inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[images, patches, hidden]``: the vision tower one image at a time, the projector, and the division by
        the square root of the hidden size the language model's graph multiplies its input embeddings by."""
        pixels = image_inputs["pixel_values"].to(self.vlm.rbln_config.vision_tower.dtype)
        tower = self.vlm.rbln_submodules[0]
        hidden = torch.cat([tower(pixels[i : i + 1]).last_hidden_state for i in range(pixels.shape[0])])
        features = self.vlm.multi_modal_projector(hidden.to(self.vlm.rbln_config.dtype))
        return features / (self.vlm.config.text_config.hidden_size**0.5)

    def open(self, row: int, tokens: Sequence[int]) -> torch.Tensor:
        cache_position = self.prefill_positions(len(tokens))
        input_ids = torch.tensor([list(tokens)], dtype=torch.long)
        with torch.no_grad():
            embeds = self.embed(tokens) if isinstance(tokens, MediaPrompt) else self.token_embeddings(input_ids)
        output = self.model.prefill_decoder(
            inputs_embeds=embeds, attention_mask=torch.ones(len(tokens), dtype=torch.long), cache_position=cache_position,
            batch_idx=row, position_ids=cache_position,
        )
        return self.prefill_logits(output, len(tokens))

    def step(self, tokens: Sequence[int], positions: Sequence[int], active: Sequence[bool]) -> torch.Tensor:
        if max(positions) >= self.max_length:
            raise ValueError(f"decode position {max(positions)} is beyond the compiled length {self.max_length}")
        cache_position = torch.tensor(list(positions), dtype=torch.int32).unsqueeze(1)
        output = self.decoder(
            input_ids=torch.tensor(list(tokens), dtype=torch.long).unsqueeze(1), cache_position=cache_position,
            attention_mask=self._decode_mask(positions), position_ids=cache_position,
        )
        self.counters.add("decode", 1, self.batch_size)
        return output.logits[:, -1, :]
