"""The lm_eval model of a masked-LM bundle (:class:`MaskedLM`; opened by ``rbln`` and ``rbln-eval run``).

``loglikelihood`` is the pseudo-log-likelihood of the continuation given the context
(:mod:`rbln_eval.families.masked_lm.pll`): ``within_word_l2r`` by default, ``pll=original`` as a model_arg.
``loglikelihood_rolling`` scores every token of a document the same way, in disjoint windows of the compiled
length. Every masked copy is a work item of its own, so any executor (one replica, data-parallel workers)
packs copies of many requests into the compiled batch rows: about ⌈copies / batch⌉ encoder calls in all.
``generate_until`` is refused before any device work.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from rbln_eval.core.lm import BundleLM
from rbln_eval.core.work import Executor, ScoreWork
from rbln_eval.errors import ConfigError
from rbln_eval.families.masked_lm.pll import WITHIN_WORD, Scored, check_variant, combine, plan_copies, windows

logger = logging.getLogger(__name__)


class MaskedLM(BundleLM):
    """Score a masked-LM bundle by pseudo-log-likelihood over its executor."""

    MODEL_ARGS: tuple[str, ...] = BundleLM.SCORING_ARGS + ("pll",)

    def __init__(self, executor: Executor, compiled_now: bool = False, pll: str = WITHIN_WORD, **scoring_args: Any) -> None:
        super().__init__(executor, compiled_now, **scoring_args)
        self.pll = check_variant(str(pll))
        tokenizer = self.tokenizer
        missing = [name for name in ("cls_token", "sep_token", "mask_token") if getattr(tokenizer, f"{name}_id") is None]
        if missing:
            raise ConfigError(f"the tokenizer of bundle {self.bundle_name} has no {', '.join(missing)}: it cannot score masked copies")
        self.masked_copies = 0
        self.scored_tokens = 0
        self._words_warned = False

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        super().check_args(args)
        if "pll" in args:
            check_variant(str(args["pll"]))

    @property
    def bundle_name(self) -> str:
        return self.bundle.digest[:12] if self.bundle is not None else str(self.tokenizer.name_or_path)

    # ---- tokenization: content tokens only; every masked copy adds [CLS] … [SEP] ---------------------------
    @property
    def prefix_token_id(self) -> int:
        return self.tokenizer.cls_token_id

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.sep_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.tokenizer.encode(string, add_special_tokens=False, verbose=False)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """As lm_eval's causal split: the whole text encoded once, the context's tokens taken off its front."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        context_tokens = self.tok_encode(context)
        return context_tokens, whole[len(context_tokens) :]

    def word_ids(self, text: str, tokens: Sequence[int]) -> tuple[int | None, ...]:
        """The word of each of ``tokens`` (the encoding of ``text``); each token its own word when unknown."""
        try:
            encoding = self.tokenizer(text, add_special_tokens=False, verbose=False)
            if list(encoding["input_ids"]) == list(tokens):
                return tuple(encoding.word_ids())
        except (ValueError, AttributeError):  # a slow tokenizer has no word ids
            pass
        if self.pll == WITHIN_WORD and not self._words_warned:
            logger.warning("word boundaries unknown for some requests: their tokens are scored as words of their own")
            self._words_warned = True
        return (None,) * len(tokens)

    # ---- loglikelihood ------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        sequences = []
        for key, context, continuation in requests:
            context, continuation = list(context), list(continuation)
            if not continuation:
                raise ValueError("a loglikelihood request has an empty continuation")
            if key is not None and key[0] == "":
                context = []  # lm_eval's stand-in for an empty context; every copy starts with [CLS] anyway
            if key is not None:
                words = self.word_ids(key[0] + key[1], context + continuation)[len(context) :]
            else:
                words = (None,) * len(continuation)
            fit = self.family.fit(self.shape, context, continuation)
            self._warn_truncation(fit.truncated)
            sequences.append(Scored(tuple(fit.context), tuple(fit.continuation), tuple(words[len(words) - len(fit.continuation) :])))
        scores = self._pseudo_loglikelihoods(sequences, "loglikelihood", disable_tqdm)
        for (key, _, _), score in zip(requests, scores):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, score)
        return scores

    def _pseudo_loglikelihoods(self, sequences: list[Scored], what: str, disable_tqdm: bool) -> list[tuple[float, bool]]:
        """Score ``sequences``: their masked copies as work items, the results summed per sequence."""
        tokenizer = self.tokenizer
        plan = plan_copies(sequences, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.mask_token_id, self.pll)
        items = [
            ScoreWork(tokens, tuple((position, target) for target in targets))
            for (tokens, position), targets in zip(plan.copies, plan.targets)
        ]
        costs = [self.family.job_cost(self.shape, len(item.context), [1] * len(item.continuations)) for item in items]
        results = self._run(what, items, costs, [1] * len(items), disable_tqdm)
        self.masked_copies += len(items)
        self.scored_tokens += sum(len(sequence.continuation) for sequence in sequences)
        return combine(plan, results)

    def _loglikelihood_rolling(self, requests: list, disable_tqdm: bool) -> list[float]:
        sequences: list[Scored] = []
        counts: list[int] = []
        for (string,) in [request.args for request in requests]:
            tokens = self.tok_encode(string)
            document = windows(tokens, self.word_ids(string, tokens), self.max_length - 2)
            sequences.extend(document)
            counts.append(len(document))
        return self._document_totals(requests, counts, self._pseudo_loglikelihoods(sequences, "loglikelihood_rolling", disable_tqdm))

    # ---- generation ---------------------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        tasks = sorted({str(getattr(request, "task_name", None) or "?") for request in requests})
        raise ConfigError(f"task(s) {', '.join(tasks)} ask for generate_until requests, which {self.family.name} bundles do not answer")

    def reference_settings(self) -> dict[str, Any]:
        return {"pll": self.pll}

    def get_model_info(self) -> dict[str, Any]:
        info = super().get_model_info()
        info["rbln"]["pll"] = {"variant": self.pll, "masked_copies": self.masked_copies, "scored_tokens": self.scored_tokens}
        return info
