"""The lm-evaluation-harness model over a bundle's executor (:class:`BundleLM`).

It tokenizes, fits and plans requests once, into work items; its executor runs them (in this process, or on
a pool of data-parallel workers), and what differs between model families is asked of the bundle's family
(``executor.family``). Tokenization follows lm_eval's ``hf`` model so both score the same token sequences.
The registered lm_eval models (``rbln``: :class:`rbln_eval.lm.RBLNLM`) build one from model_args.
"""

from __future__ import annotations

import contextlib
import logging
import time
from types import MappingProxyType
from typing import Any, Iterable, Iterator, Mapping

import jinja2

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import (
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from rbln_eval.core.programs import job_work, plan_loglikelihood
from rbln_eval.errors import ConfigError
from rbln_eval.util.values import as_bool, as_int
from rbln_eval.core.work import Executor, GenerateWork
from rbln_eval.identity import toolchain_versions

logger = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256


class BundleLM(TemplateLM):
    """Score a compiled bundle over its executor: prefill once per context, batched decode for the rest."""

    #: The name lm_eval knows this model by (recorded in results).
    MODEL_NAME = "rbln"
    #: model_args of the scoring itself.
    SCORING_ARGS = ("max_gen_toks", "add_bos_token", "batch_size", "max_batch_size")
    MODEL_ARGS: tuple[str, ...] = SCORING_ARGS

    def __init__(
        self,
        executor: Executor,
        compiled_now: bool = False,
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        add_bos_token: bool | str | None = None,
        batch_size: Any = None,
        max_batch_size: Any = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        self.check_args(unknown)
        gen_toks = as_int(max_gen_toks, "max_gen_toks")
        self._max_gen_toks = DEFAULT_MAX_GEN_TOKS if gen_toks is None else gen_toks
        self.add_bos_token = None if add_bos_token is None else as_bool(add_bos_token, "add_bos_token")
        self.executor = executor
        self.compiled_now = compiled_now
        self.bundle = executor.bundle
        self.family = executor.family
        self.backend = self.family.name
        self.tokenizer = executor.tokenizer
        self.shape = executor.shape
        self.max_length = self.shape.max_length
        self.load_seconds = executor.load_seconds
        self._truncation_warned = False
        self.seconds_by_type: dict[str, float] = {}
        self.counters_by_type: dict[str, dict[str, dict[str, int]]] = {}  # request type -> graph -> calls, tokens
        self.requests_served = 0
        if batch_size not in (None, "", "auto") and str(batch_size) != str(self.shape.batch_size):
            logger.warning(
                "batch_size %s ignored: bundle %s runs at its compiled batch size %d",
                batch_size, self.bundle.digest[:12], self.shape.batch_size,
            )

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> None:
        """Refuse model_args this model does not know."""
        unknown = sorted(set(args) - set(cls.MODEL_ARGS))
        if unknown:
            raise ConfigError(
                f"unknown model_args for {cls.MODEL_NAME}: {', '.join(unknown)}; accepted: {', '.join(cls.MODEL_ARGS)}"
            )

    def close(self) -> None:
        """Release the replicas (stops data-parallel workers)."""
        self.executor.close()

    def __enter__(self) -> "BundleLM":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def data_parallel(self) -> int:
        return len(self.executor.groups or [None])

    # ---- tokenization (as lm_eval's hf model) ----------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.tokenizer.bos_token_id is not None:
            return self.tokenizer.bos_token_id
        return self.tokenizer.eos_token_id

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        # verbose=False: inputs longer than the compiled length are truncated here (one warning of our own),
        # so transformers' "Token indices sequence length is longer…" warning does not apply.
        return self.tokenizer.encode(string, verbose=False, **special)

    def tok_decode(self, tokens: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    # ---- chat templates (as lm_eval's hf model; ``chat_template`` is lm_eval's TemplateLM's) -------------
    #: Keyword arguments of the tokenizer's ``apply_chat_template`` (hf's ``chat_template_args``).
    chat_template_args: Mapping[str, Any] = MappingProxyType({})

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt of a chat: the tokenizer's template applied as lm_eval's ``hf`` applies it."""
        try:
            chat_templated = self.tokenizer.apply_chat_template(
                chat_history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
                **self.chat_template_args,
            )
        except jinja2.exceptions.TemplateError:
            logger.warning("Failed to apply chat template. removing the system role in chat history.")
            chat_history = [msg for msg in chat_history if msg["role"] != "system"]
            chat_templated = self.tokenizer.apply_chat_template(
                chat_history,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt,
                **self.chat_template_args,
            )
        return chat_templated

    def _warn_truncation(self, what: str | None) -> None:
        if what and not self._truncation_warned:
            logger.warning("%s longer than the compiled length %d: truncated from the left", what, self.max_length)
            self._truncation_warned = True

    @property
    def eval_seconds(self) -> float:
        """Seconds spent in the request calls lm_eval made, all types together."""
        return sum(self.seconds_by_type.values())

    @contextlib.contextmanager
    def _timed(self, request_type: str, requests: int) -> Iterator[None]:
        """Account one lm_eval request call: its seconds, its requests and the device work it caused."""
        started = time.monotonic()
        before = self.executor.counters()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.seconds_by_type[request_type] = self.seconds_by_type.get(request_type, 0.0) + seconds
            self.requests_served += requests
            counted = self.counters_by_type.setdefault(request_type, {})
            for graph, now in self.executor.counters().items():
                was = before.get(graph, {})
                total = counted.setdefault(graph, {"calls": 0, "tokens": 0})
                total["calls"] += now.get("calls", 0) - was.get("calls", 0)
                total["tokens"] += now.get("tokens", 0) - was.get("tokens", 0)

    def _run(self, what: str, items: list, costs: list[int], sizes: list[int], disable_tqdm: bool) -> list[Any]:
        """Run work items on the executor, with a progress bar over the requests they hold."""
        if not items:
            return []
        suffix = f" ×{self.data_parallel}" if self.data_parallel > 1 else ""
        progress = tqdm(total=sum(sizes), disable=disable_tqdm, desc=f"rbln {what}{suffix}")
        try:
            return self.executor.run(items, costs, sizes, progress.update)
        finally:
            progress.close()

    # ---- loglikelihood ------------------------------------------------------------------------------
    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        with self._timed("loglikelihood", len(requests)):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _fit_all(self, requests: list) -> list[tuple[list[int], list[int]]]:
        """Left-truncate like lm_eval's hf model: the model sees at most the compiled lengths."""
        fitted = []
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("a loglikelihood request has an empty continuation")
            fit = self.family.fit(self.shape, list(context), list(continuation))
            self._warn_truncation(fit.truncated)
            fitted.append((fit.context, fit.continuation))
        return fitted

    #: With a full-logit bundle, prefill a shared context's whole chunks once per job, each continuation from the
    #: context's last chunk boundary (False: the whole context once per multi-token continuation).
    share_context_chunks = True

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        fitted = self._fit_all(requests)
        chunk = self.shape.prefill_chunk if self.share_context_chunks else None
        jobs = plan_loglikelihood(fitted, full_logits=self.shape.full_logits, prefill_chunk=chunk, steps_go_back=self.shape.steps_go_back)
        items = [job_work(job, fitted) for job in jobs]
        costs = [self.family.job_cost(self.shape, len(item.context), [len(c) for c in item.continuations]) for item in items]
        scored = self._run("loglikelihood", items, costs, [len(job.members) for job in jobs], disable_tqdm)
        results: list[Any] = [None] * len(requests)
        for job, scores in zip(jobs, scored):
            for index, score in zip(job.members, scores):
                results[index] = tuple(score)
                if requests[index][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], results[index])
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        with self._timed("loglikelihood_rolling", len(requests)):
            return self._loglikelihood_rolling(requests, disable_tqdm)

    def _loglikelihood_rolling(self, requests: list, disable_tqdm: bool) -> list[float]:
        windows: list[tuple[None, list[int], list[int]]] = []
        counts: list[int] = []
        for (string,) in [request.args for request in requests]:
            request_windows = [
                make_disjoint_window(window)
                for window in get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            windows.extend((None, ctx, cont) for ctx, cont in request_windows)
            counts.append(len(request_windows))
        return self._document_totals(requests, counts, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm))

    def _document_totals(self, requests: list, counts: list[int], scores: list[tuple[float, bool]]) -> list[float]:
        """Each rolling request's log-likelihood: the sum of its ``count`` windows' scores, in order."""
        totals: list[float] = []
        start = 0
        for request, count in zip(requests, counts):
            total = sum(score for score, _ in scores[start : start + count])
            start += count
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- generation ---------------------------------------------------------------------------------
    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        with self._timed("generate_until", len(requests)):
            return self._generate_until(requests, disable_tqdm)

    def _generate_until(self, requests: list, disable_tqdm: bool) -> list[str]:
        # Every request is checked and planned before any device work.
        planned = self._generation_items(requests)
        items = [work for work, _ in planned]
        costs = [self.family.generation_cost(self.shape, len(work.tokens), budget) for work, budget in planned]
        generated = self._run("generate_until", items, costs, [1] * len(items), disable_tqdm)
        outputs = []
        for request, work, tokens in zip(requests, items, generated):
            text = postprocess_generated_text(self.tok_decode(tokens), list(work.until), None)
            outputs.append(text)
            self.cache_hook.add_partial("generate_until", tuple(request.args[:2]), text)
        return outputs

    def _generation_items(self, requests: list) -> list[tuple[GenerateWork, int]]:
        """The work item of each ``generate_until`` request, and its ``max_gen_toks``."""
        return [self._generation_work(context, gen_kwargs) for context, gen_kwargs in [r.args[:2] for r in requests]]

    def _greedy_settings(self, gen_kwargs: dict[str, Any]) -> tuple[list[str], int]:
        """The stop sequences and new-token budget of a ``generate_until`` request; sampling is refused."""
        kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            raise ConfigError("the rbln model generates greedily; set do_sample=false (temperature 0) in gen_kwargs")
        return until, int(kwargs.pop("max_gen_toks"))

    def _generation_work(self, context: str, gen_kwargs: dict[str, Any]) -> tuple[GenerateWork, int]:
        """The work item of one ``generate_until`` request, and its ``max_gen_toks``."""
        until, max_gen = self._greedy_settings(gen_kwargs)
        tokens = self.family.generation_tokens(self.tokenizer, context, self.add_bos_token)
        limit = self.family.generation_limit(self.shape, max_gen)
        if limit <= 0:
            raise ConfigError(f"max_gen_toks {max_gen} leaves no room for a context in the compiled length {self.max_length}")
        if len(tokens) > limit:
            self._warn_truncation("a generation context")
            tokens = tokens[-limit:]
        steps = self.family.generation_steps(len(tokens), max_gen)
        return GenerateWork(tuple(tokens), steps, tuple(until)), max_gen

    def reference_settings(self) -> dict[str, Any]:
        """The scoring model_args the reference of ``compare`` must share (a PLL variant, a language)."""
        return {}

    @property
    def device_counters(self) -> dict[str, dict[str, int]]:
        return self.executor.counters()

    def get_model_info(self) -> dict[str, Any]:
        """Provenance recorded in lm_eval's results config: the bundle, toolchain, timings, device counters."""
        info = provenance(self.executor, self.compiled_now, self.seconds_by_type, self.requests_served)
        info.update(max_length=self.max_length, device_counters_by_request_type=self.counters_by_type)
        return {"rbln": info}


def provenance(executor: Executor, compiled_now: bool, seconds_by_type: Mapping[str, float], requests: int) -> dict[str, Any]:
    """What results record of a bundle's run (``config.rbln``): the bundle, toolchain, timings, device counters."""
    bundle = executor.bundle
    eval_seconds = sum(seconds_by_type.values())
    return {
        "bundle_digest": bundle.digest,
        "bundle_path": str(bundle.path),
        "key": bundle.key.fields(),
        "toolchain": toolchain_versions(),
        "compiled_now": compiled_now,
        "load_seconds": round(executor.load_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "eval_seconds_by_request_type": {k: round(v, 3) for k, v in seconds_by_type.items()},
        "requests": requests,
        "requests_per_second": round(requests / eval_seconds, 3) if eval_seconds else None,
        "batch_size": executor.shape.batch_size,
        "device_counters": executor.counters(),
        **executor.describe(),
    }
