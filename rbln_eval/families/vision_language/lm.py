"""The lm_eval model of an image-text-to-text bundle (:class:`VisionLanguageLM`; registered as ``rbln-vlm``).

It follows lm_eval's ``hf-multimodal`` model (the ``MULTIMODAL`` interface): requests carry
``{"visual": [PIL images]}``, ``<image>`` placeholders become the model's image token, the processor expands
them and prepares the pixels, and chat templates are the processor's. ``generate_until`` is greedy with stop
sequences, batched over the compiled batch rows. Beyond ``hf-multimodal``, ``loglikelihood`` scores
multimodal requests too (one prefill per context and image set), so multiple-choice image tasks can be
scored by log-likelihood. Text-only requests go through :class:`~rbln_eval.core.lm.BundleLM`'s paths.

Requests become the same work items as text requests, carrying their images
(:class:`~rbln_eval.core.work.Media`), so they run on any executor: one replica here, or data-parallel workers.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Sequence

from lm_eval.models.hf_vlms import DEFAULT_IMAGE_PLACEHOLDER, HFMultimodalLM
from lm_eval.models.utils import flatten_image_list, replace_placeholders, resize_image

from rbln_eval.core.programs import plan_loglikelihood
from rbln_eval.errors import ConfigError
from rbln_eval.core.work import GenerateWork, Media, ScoreWork
from rbln_eval.core.lm import BundleLM
from rbln_eval.util.values import as_bool, as_int
from rbln_eval.families.vision_language.compile import (
    PREFIX_LM_TYPES,
    PREPENDED_IMAGE_TYPES,
    SCORED_TOWERS,
    SCORED_VLM_TYPES,
    SINGLE_IMAGE_TYPES,
    unscored_tower,
)
from rbln_eval.families.vision_language.processors import TOKEN_FIELDS, encode_prefix_and_suffix, load_processor
from rbln_eval.errors import MultimodalRequestError

logger = logging.getLogger(__name__)


def image_fingerprint(images: Sequence[Any]) -> str:
    """Identity of a request's images by content (so equal images share a prefill, different ones never)."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.mode}:{image.size}:".encode())
        digest.update(image.tobytes())
    return digest.hexdigest()


class MultimodalEncoding:
    """hf-multimodal's side of a multimodal model: images, processor, chat template, request encoding."""

    MULTIMODAL = True
    MULTIMODAL_ARGS = (
        "image_token_id", "image_string", "interleave", "max_images", "convert_img_format",
        "image_width", "image_height", "image_max_side",
    )
    tokenizer: Any
    bundle: Any
    max_length: int
    shape: Any

    def _setup_multimodal(
        self,
        processor: Any,
        config: Any,
        image_token_id: int | str | None = None,
        image_string: str | None = None,
        interleave: bool | str = True,
        max_images: int | str | None = None,
        convert_img_format: bool | str = False,
        image_width: int | str | None = None,
        image_height: int | str | None = None,
        image_max_side: int | str | None = None,
    ) -> None:
        model_type = getattr(config, "model_type", None)
        if model_type not in SCORED_VLM_TYPES:
            raise ConfigError(
                f"multimodal scoring is verified for {', '.join(SCORED_VLM_TYPES)}; bundle "
                f"{self.bundle.digest[:12]} is {model_type} (it compiles and loads, but is not scored yet)"
            )
        tower = unscored_tower(config)
        if tower is not None:
            raise ConfigError(
                f"bundle {self.bundle.digest[:12]} is a {model_type} with a {tower} vision tower; rbln-vlm scores a "
                f"{model_type} with {' or '.join(SCORED_TOWERS[model_type])} towers only"
            )
        if processor is None:
            raise ConfigError(
                f"the processor of bundle {self.bundle.digest[:12]} cannot be built on this machine "
                "(see the warning above): install what it names"
            )
        self.processor = processor
        self.config = config
        self.model_type = model_type
        self.interleave = as_bool(interleave, "interleave")
        self.max_images = as_int(max_images, "max_images") or 999
        if model_type in SINGLE_IMAGE_TYPES and max_images is not None and self.max_images > 1:
            raise ConfigError(self._single_image_refusal(f"max_images={self.max_images}"), "pass max_images=1")
        self.rgb = as_bool(convert_img_format, "convert_img_format")
        self.image_width = as_int(image_width, "image_width")
        self.image_height = as_int(image_height, "image_height")
        self.image_max_side = as_int(image_max_side, "image_max_side")
        if self.image_max_side and (self.image_width or self.image_height):
            raise ConfigError("pass image_max_side or image_width/image_height, not both")
        self.chat_applied = False
        if image_string:
            self.image_token = image_string
        elif model_type in PREPENDED_IMAGE_TYPES and image_token_id is None:
            self.image_token = ""  # the processor puts the image tokens itself: placeholders are dropped
        else:
            token_id = as_int(image_token_id, "image_token_id") or (
                getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
            )
            if token_id is None:
                raise ConfigError("the model config names no image token: pass image_token_id= or image_string=")
            self.image_token = self.tokenizer.decode([int(token_id)], skip_special_tokens=False)

    # ---- chat templates (as hf-multimodal: the processor's) ------------------------------------------
    @property
    def tokenizer_name(self) -> str:
        return str(self.bundle.digest)

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        tokenizer = self.tokenizer
        self.tokenizer = self.processor if hasattr(self.processor, "apply_chat_template") else tokenizer
        try:
            return super().chat_template(chat_template)  # type: ignore[misc]
        finally:
            self.tokenizer = tokenizer

    apply_chat_template = HFMultimodalLM.apply_chat_template

    # ---- encoding ------------------------------------------------------------------------------------
    def _images(self, aux: Any) -> list[Any]:
        visuals = (aux or {}).get("visual") if isinstance(aux, dict) else None
        if visuals is None:
            raise MultimodalRequestError("a multimodal request has no 'visual' images in its arguments")
        images = [resize_image(img, self.image_width, self.image_height, self.image_max_side) for img in visuals]
        images = images[: self.max_images]
        if len(images) > 1 and self.model_type in SINGLE_IMAGE_TYPES:
            raise MultimodalRequestError(self._single_image_refusal(f"a request with {len(images)} images"), "pass max_images=1")
        if self.rgb:
            images = [img.convert("RGB") for img in images]
        return images

    def _single_image_refusal(self, what: str) -> str:
        import optimum.rbln
        import transformers

        why = SINGLE_IMAGE_TYPES[self.model_type].format(optimum=optimum.rbln.__version__, transformers=transformers.__version__)
        return f"{what} for a {self.model_type}: {why}"

    def _with_image_tokens(self, text: str) -> str:
        """``text`` with its ``<image>`` placeholders as the model's image token, as hf-multimodal's generation
        encodes them (a chat template has put images in their place already). Log-likelihood contexts too: the
        processor of a model whose image token is not ``<image>`` (Qwen2-VL's ``<|image_pad|>``) finds none else."""
        if self.chat_applied:
            return text
        return replace_placeholders(text, DEFAULT_IMAGE_PLACEHOLDER, self.image_token, self.max_images)

    def _encode(self, text: str, images: list[Any]) -> tuple[list[int], dict[str, Any]]:
        """Token ids and image tensors of one prompt, from the processor (as hf-multimodal batches of one).

        The processor's per-token fields (:data:`TOKEN_FIELDS`) are dropped: a prefill's tokens may be a prefix
        of the encoded text (a context and its continuation), and the backend derives them from its own tokens.
        """
        batch = flatten_image_list([images]) if self.model_type == "llava" else [images]
        encoding = self.processor(images=batch, text=[text], return_tensors="pt")
        tokens = encoding.pop("input_ids")[0].tolist()
        for name in TOKEN_FIELDS:
            encoding.pop(name, None)
        return tokens, dict(encoding)

    def _check_fits(self, tokens: Sequence[int], room: int, what: str) -> None:
        if len(tokens) > room:
            raise MultimodalRequestError(
                f"{what} of {len(tokens)} tokens (image tokens included) does not fit the compiled length "
                f"{self.max_length}: compile with a larger --max-seq-len"
            )

    def _loglikelihood_jobs(self, requests: list) -> tuple[list[ScoreWork], list[tuple[int, ...]]]:
        """Encode multimodal loglikelihood requests into jobs (one prefill each) and the requests each job scores."""
        encoded = []
        for context, continuation, aux in [request.args for request in requests]:
            if context == "":
                raise MultimodalRequestError("a multimodal loglikelihood request needs a non-empty context")
            images = self._images(aux)
            context = self._with_image_tokens(context)
            # as hf-multimodal's pair encoding: trailing spaces of the context move to the continuation
            spaces = len(context) - len(context.rstrip())
            if spaces:
                context, continuation = context[:-spaces], context[-spaces:] + continuation
            if self.model_type in PREFIX_LM_TYPES:  # the context is the prompt, the continuation its suffix
                context_tokens, continuation_tokens, image_inputs = encode_prefix_and_suffix(
                    self.processor, context, continuation, images
                )
                whole = context_tokens + continuation_tokens
            else:
                whole, image_inputs = self._encode(context + continuation, images)
                context_tokens, _ = self._encode(context, images)
                continuation_tokens = whole[len(context_tokens) :]
            if not continuation_tokens:
                raise MultimodalRequestError("a loglikelihood request has an empty continuation")
            self._check_fits(whole[:-1], self.max_length, "a request")
            encoded.append((context_tokens, continuation_tokens, image_inputs, len(images), image_fingerprint(images)))
        groups: dict[str, list[int]] = {}
        for index, item in enumerate(encoded):
            groups.setdefault(item[4], []).append(index)
        items: list[ScoreWork] = []
        owners: list[tuple[int, ...]] = []
        for members in groups.values():  # requests share a prefill only when their images are the same
            pairs = [(encoded[i][0], encoded[i][1]) for i in members]
            jobs = plan_loglikelihood(pairs, full_logits=self.shape.full_logits, steps_go_back=self.shape.steps_go_back)
            for job in jobs:
                indices = tuple(members[m] for m in job.members)
                _, _, image_inputs, count, key = encoded[indices[0]]
                continuations = tuple(tuple(encoded[i][1]) for i in indices)
                items.append(ScoreWork(tuple(job.context), continuations, Media(image_inputs, count, key)))
                owners.append(indices)
        return items, owners

    def _generation_items(self, requests: list) -> list[tuple[GenerateWork, int]]:
        """The work item of each ``generate_until`` request (multimodal ones with their images), and its ``max_gen_toks``."""
        if not requests or len(requests[0].args) < 3:
            return super()._generation_items(requests)  # type: ignore[misc]
        items: list[tuple[GenerateWork, int]] = []
        for context, gen_kwargs, aux in [request.args for request in requests]:
            if not isinstance(gen_kwargs, dict):
                raise MultimodalRequestError(f"generation arguments must be a dict, got {type(gen_kwargs).__name__}")
            images = self._images(aux)
            text = self._with_image_tokens(context)
            until, max_gen = self._greedy_settings(gen_kwargs)  # type: ignore[attr-defined]
            tokens, image_inputs = self._encode(text, images)
            self._check_fits(tokens, self.max_length - max_gen, f"a generation context (with room for {max_gen} new tokens)")
            images_in = Media(image_inputs, len(images), image_fingerprint(images))
            items.append((GenerateWork(tuple(tokens), max_gen, tuple(until), images_in), max_gen))
        return items

    def _store_loglikelihoods(self, requests: list, owners: list[tuple[int, ...]], scored: list[Any]) -> list[tuple[float, bool]]:
        results: list[Any] = [None] * len(requests)
        for members, scores in zip(owners, scored):
            for member, score in zip(members, scores):
                results[member] = tuple(score)
                context, continuation, _ = requests[member].args
                self.cache_hook.add_partial("loglikelihood", (context, continuation), results[member])  # type: ignore[attr-defined]
        return results

    def _multimodal_info(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "image_token": self.image_token}


class VisionLanguageLM(MultimodalEncoding, BundleLM):
    """Score an image-text-to-text bundle: image features prefilled once per context, decode batched."""

    MODEL_NAME = "rbln-vlm"
    MODEL_ARGS = BundleLM.MODEL_ARGS + MultimodalEncoding.MULTIMODAL_ARGS

    def __init__(self, executor: Any, compiled_now: bool = False, **kwargs: Any) -> None:
        multimodal = {k: kwargs.pop(k) for k in self.MULTIMODAL_ARGS if k in kwargs}
        super().__init__(executor, compiled_now, **kwargs)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(self.bundle.path))
        self._setup_multimodal(load_processor(self.bundle.path, config.model_type), config, **multimodal)
        self.multimodal_settings = {name: value for name, value in multimodal.items() if value is not None}

    def reference_settings(self) -> dict[str, Any]:
        """The multimodal model_args (``image_string``, ``max_images``…): ``hf-multimodal`` takes the same ones."""
        return dict(self.multimodal_settings)

    # ---- loglikelihood -------------------------------------------------------------------------------
    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        if not requests or len(requests[0].args) < 3:
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        with self._timed("loglikelihood", len(requests)):
            items, owners = self._loglikelihood_jobs(requests)
            costs = [self.family.job_cost(self.shape, len(w.context), [len(c) for c in w.continuations]) for w in items]
            scored = self._run("loglikelihood", items, costs, [len(o) for o in owners], disable_tqdm)
            return self._store_loglikelihoods(requests, owners, scored)

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        if requests and isinstance(requests[0].args[-1], dict):
            raise MultimodalRequestError(
                "loglikelihood_rolling has no meaning for image requests (the log-likelihood of an image is not scored)"
            )
        return super().loglikelihood_rolling(requests, disable_tqdm=disable_tqdm)

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        info["rbln"]["multimodal"] = self._multimodal_info()
        return info
