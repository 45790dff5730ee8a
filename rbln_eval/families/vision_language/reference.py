"""The reference side of ``rbln-eval compare`` for image-text-to-text bundles: lm_eval's ``hf-multimodal``.

``hf-multimodal`` refuses multimodal ``loglikelihood`` requests; :class:`HFMultimodalReference` scores them
with one transformers forward per request over hf-multimodal's own encoding of the context, continuation
and images, so multiple-choice image tasks can be compared too. Everything else is ``hf-multimodal``'s.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from lm_eval.models.hf_vlms import HFMultimodalLM
from tqdm import tqdm


class HFMultimodalReference(HFMultimodalLM):
    """``hf-multimodal`` plus multimodal log-likelihoods (one forward per request, batch of one)."""

    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if not requests or len(requests[0].args) < 3:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        results = []
        for context, continuation, aux in tqdm([r.args for r in requests], disable=disable_tqdm, desc="hf-multimodal loglikelihood"):
            images = list(aux["visual"])[: self.max_images]
            context_enc, continuation_enc, image_enc = self._encode_multimodal_pair(context, continuation, images)
            whole = list(context_enc) + list(continuation_enc)
            inputs = {k: torch.as_tensor(np.asarray(v)).to(self.device, self.model.dtype) for k, v in image_enc.items()}
            with torch.no_grad():
                logits = self.model(input_ids=torch.tensor([whole], device=self.device), **inputs).logits[0]
            scored = torch.log_softmax(logits[len(context_enc) - 1 : len(whole) - 1].float(), dim=-1)
            target = torch.tensor(list(continuation_enc), device=scored.device)
            logprob = float(scored.gather(1, target[:, None]).sum())
            greedy = bool((scored.argmax(-1) == target).all())
            results.append((logprob, greedy))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), (logprob, greedy))
        return results


def multimodal_reference_lm(pretrained: str, revision: str | None, device: str, max_length: int | None = None) -> Any:
    """``hf-multimodal`` in float32 at batch size 1 (left padding of larger batches changes greedy answers)."""
    kwargs: dict[str, Any] = {}
    if revision:
        kwargs["revision"] = revision
    if max_length:
        kwargs["max_length"] = max_length
    return HFMultimodalReference(pretrained=pretrained, dtype="float32", device=device, batch_size=1, **kwargs)
