"""The reference side of ``rbln-eval compare`` for image-text-to-text bundles: lm_eval's ``hf-multimodal``.

``hf-multimodal`` refuses multimodal ``loglikelihood`` requests; :class:`HFMultimodalReference` scores them
with one transformers forward per request over hf-multimodal's own encoding of the context, continuation
and images, so multiple-choice image tasks can be compared too (a prefix-LM's, PaliGemma's: the context as its
prompt and the continuation as its suffix, attended causally, as ``rbln-vlm`` scores it). Its processor is the one
``rbln-vlm`` builds (:func:`~rbln_eval.families.vision_language.processors.load_processor`: transformers' own where it can be built,
Qwen2-VL's without its video processor where torchvision is missing). Its image token is ``rbln-vlm``'s: none for
BLIP-2, whose processor puts a prompt's image tokens itself (``<image>`` placeholders are dropped). Everything else
is ``hf-multimodal``'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lm_eval.models.hf_vlms import DEFAULT_IMAGE_PLACEHOLDER, HFMultimodalLM
from lm_eval.models.utils import replace_placeholders
from tqdm import tqdm

from rbln_eval.families.vision_language.compile import PREFIX_LM_TYPES, PREPENDED_IMAGE_TYPES
from rbln_eval.families.vision_language.processors import encode_prefix_and_suffix, load_processor


class HFMultimodalReference(HFMultimodalLM):
    """``hf-multimodal`` plus multimodal log-likelihoods (one forward per request, batch of one)."""

    def __init__(self, *args: Any, image_string: str | None = None, image_token_id: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, image_string=image_string, image_token_id=image_token_id, **kwargs)
        if not image_string and image_token_id is None and getattr(self.config, "model_type", None) in PREPENDED_IMAGE_TYPES:
            self.image_token = ""  # as rbln-vlm: the processor puts the image tokens itself, placeholders are dropped

    def _create_tokenizer(
        self, pretrained: Any, tokenizer: Any, revision: str | None = "main", trust_remote_code: bool | None = False, **kwargs: Any
    ) -> None:
        """The processor ``rbln-vlm`` builds for the same model, and its tokenizer."""
        if tokenizer or not isinstance(pretrained, str):
            return super()._create_tokenizer(pretrained, tokenizer, revision=revision, trust_remote_code=trust_remote_code, **kwargs)
        options = {"revision": revision, "trust_remote_code": trust_remote_code, **self.pixels}
        self.processor = load_processor(pretrained, getattr(self.config, "model_type", None), **options)
        if self.processor is None:
            raise RuntimeError(f"the processor of {pretrained} cannot be built on this machine (see the warning above)")
        self.tokenizer = self.processor.tokenizer

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if not requests or len(requests[0].args) < 3:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        results = []
        for context, continuation, aux in tqdm([r.args for r in requests], disable=disable_tqdm, desc="hf-multimodal loglikelihood"):
            images = list(aux["visual"])[: self.max_images]
            text = context
            if not self.chat_applied:  # <image> placeholders as the model's image token, as rbln-vlm's contexts
                text = replace_placeholders(context, DEFAULT_IMAGE_PLACEHOLDER, self.image_token, self.max_images)
            prefix_lm = getattr(self.config, "model_type", None) in PREFIX_LM_TYPES
            if prefix_lm:
                spaces = len(text) - len(text.rstrip())  # as hf-multimodal's pair encoding
                pair = (text[:-spaces], text[-spaces:] + continuation) if spaces else (text, continuation)
                context_enc, continuation_enc, image_enc = encode_prefix_and_suffix(self.processor, *pair, images)
            else:
                context_enc, continuation_enc, image_enc = self._encode_multimodal_pair(text, continuation, images)
            whole = list(context_enc) + list(continuation_enc)
            inputs = {k: self._image_tensor(v) for k, v in image_enc.items()}
            if prefix_lm:  # the prefix attends bidirectionally, the suffix causally
                inputs["token_type_ids"] = torch.tensor([[0] * len(context_enc) + [1] * len(continuation_enc)], device=self.device)
            with torch.no_grad():
                logits = self.model(input_ids=torch.tensor([whole], device=self.device), **inputs).logits[0]
            scored = torch.log_softmax(logits[len(context_enc) - 1 : len(whole) - 1].float(), dim=-1)
            target = torch.tensor(list(continuation_enc), device=scored.device)
            logprob = float(scored.gather(1, target[:, None]).sum())
            greedy = bool((scored.argmax(-1) == target).all())
            results.append((logprob, greedy))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (logprob, greedy))
        return results

    def _image_tensor(self, value: Any) -> torch.Tensor:
        """One processor output as a model input: floating values in the model's dtype, integers (grids, token
        types) as they are."""
        tensor = torch.as_tensor(np.asarray(value)).to(self.device)
        return tensor.to(self.model.dtype) if tensor.is_floating_point() else tensor


def multimodal_reference_lm(
    pretrained: str, revision: str | None, device: str, max_length: int | None = None, **settings: Any,
) -> Any:
    """``hf-multimodal`` in float32 at batch size 1 (left padding of larger batches changes greedy answers), with the
    bundle lm's multimodal ``settings`` (``image_string``, ``max_images``…)."""
    kwargs: dict[str, Any] = dict(settings)
    if revision:
        kwargs["revision"] = revision
    if max_length:
        kwargs["max_length"] = max_length
    return HFMultimodalReference(pretrained=pretrained, dtype="float32", device=device, batch_size=1, **kwargs)
