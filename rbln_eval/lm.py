"""The lm-evaluation-harness model ``rbln``: scores a compiled bundle on Rebellions NPUs.

Three ways in: ``rbln-eval run``; ``lm_eval.simple_evaluate(model=RBLNLM(artifact=...))``; and
``lm_eval --model rbln --model_args artifact=...`` (through ``rbln-eval lm-eval`` or the ``lm_eval.models``
entry point). Tokenization follows lm_eval's ``hf`` model so both score the same token sequences.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Iterable, Iterator

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import (
    _add_special_kwargs,
    handle_stop_sequences,
    has_bos_prefix,
    normalize_gen_kwargs,
    postprocess_generated_text,
)
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from .backends import backend_for
from .compiler import CompileOptions
from .engine import Program, greedy_program, loglikelihood_program, plan_loglikelihood, run_programs
from .errors import ConfigError, RblnEvalError
from .identity import toolchain_versions
from .loader import LoadedBundle, load_bundle
from .store import Bundle, Store
from .workflow import compile_bundle, find_or_pull, plan_compile

logger = logging.getLogger(__name__)

DEFAULT_MAX_GEN_TOKS = 256
_BOOL_TRUE = ("1", "true", "yes", "on")


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _BOOL_TRUE:
        return True
    if text in ("0", "false", "no", "off", "none", ""):
        return False
    raise ConfigError(f"model_args {name}={value!r} is not a boolean (use true or false)")


def _as_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"model_args {name}={value!r} is not an integer") from None


def resolve_bundle(
    store: Store,
    artifact: str | None = None,
    pretrained: str | None = None,
    revision: str | None = None,
    options: CompileOptions | None = None,
    export: bool = False,
    npu: str | None = None,
    trust_remote_code: bool = False,
    remote: bool | str = True,
) -> tuple[Bundle, bool]:
    """The bundle to evaluate, and whether it was compiled now.

    ``artifact`` names a stored bundle; ``pretrained`` (+ compile options) is keyed and looked up in the
    store, then on the store's remotes (``remote``: all of them, ``False`` for none, or one remote's name),
    and with ``export`` compiled through the store on a miss — never outside it.
    """
    if artifact and pretrained:
        raise ConfigError("pass either artifact= or pretrained=, not both")
    if artifact:
        return store.resolve(artifact), False
    if not pretrained:
        raise ConfigError("model_args need artifact=REF (a stored bundle) or pretrained=MODEL")
    request = plan_compile(pretrained, options or CompileOptions(), revision=revision, npu=npu, trust_remote_code=trust_remote_code)
    from .remotes import configured_remotes

    remotes = [] if remote is False else configured_remotes(store, only=remote if isinstance(remote, str) else None)
    found = find_or_pull(request, store, remotes, notify=logger.info)
    if found is not None:
        return found[0], False
    if not export:
        raise RblnEvalError(
            f"no bundle for {pretrained} with this config (key {request.key.digest[:12]}): "
            "compile it with `rbln-eval compile` or pass export=True"
        )
    result = compile_bundle(request, store, trust_remote_code=trust_remote_code)
    return result.bundle, result.built


@register_model("rbln")
class RBLNLM(TemplateLM):
    """Score a compiled bundle: prefill once per context, teacher-forced decode for continuations."""

    MODEL_ARGS = (
        "artifact", "pretrained", "revision", "trust_remote_code", "rbln_batch_size", "rbln_max_seq_len",
        "rbln_tensor_parallel_size", "export", "store", "device", "npu", "logits", "max_gen_toks",
        "add_bos_token", "batch_size", "max_batch_size",
    )

    def __init__(
        self,
        artifact: str | None = None,
        pretrained: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool | str = False,
        rbln_batch_size: int | str | None = None,
        rbln_max_seq_len: int | str | None = None,
        rbln_tensor_parallel_size: int | str | None = None,
        export: bool | str = False,
        store: str | None = None,
        device: Any = None,
        npu: str | None = None,
        logits: str = "all",
        max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
        add_bos_token: bool | str | None = None,
        batch_size: Any = None,
        max_batch_size: Any = None,
        loaded: LoadedBundle | None = None,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(
                f"unknown model_args for rbln: {', '.join(sorted(unknown))}; accepted: {', '.join(self.MODEL_ARGS)}"
            )
        if loaded is None:
            options = CompileOptions(
                batch_size=_as_int(rbln_batch_size, "rbln_batch_size"),
                max_seq_len=_as_int(rbln_max_seq_len, "rbln_max_seq_len"),
                tp=_as_int(rbln_tensor_parallel_size, "rbln_tensor_parallel_size"),
                logits=logits,
            )
            bundle, self.compiled_now = resolve_bundle(
                Store(store), artifact, pretrained, revision, options, _as_bool(export, "export"), npu,
                _as_bool(trust_remote_code, "trust_remote_code"),
            )
            loaded = load_bundle(bundle, device=_parse_device(device))
        else:
            self.compiled_now = False
        self.loaded = loaded
        self.load_seconds = loaded.load_seconds
        self.bundle = loaded.bundle
        self.tokenizer = loaded.tokenizer
        self.backend = "seq2seq" if loaded.model_class == "seq2seq" else "causal"
        self.device_backend = backend_for(loaded.model)
        self.max_length = self.device_backend.max_length
        self._max_gen_toks = int(max_gen_toks)
        self.add_bos_token = None if add_bos_token is None else _as_bool(add_bos_token, "add_bos_token")
        self._truncation_warned = False
        self._start_accounting()
        self._sim_baseline: dict[str, dict[str, float]] | None = _simulator_counters()
        if batch_size not in (None, "", "auto") and str(batch_size) != str(self.device_backend.batch_size):
            logger.warning(
                "batch_size %s ignored: bundle %s runs at its compiled batch size %d",
                batch_size, self.bundle.digest[:12], self.device_backend.batch_size,
            )

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

    @property
    def device_counters(self) -> dict[str, dict[str, int]]:
        return self.device_backend.counters.as_dict()

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        special = _add_special_kwargs(add_special_tokens, self.add_bos_token)
        if add_special_tokens is None and has_bos_prefix(string, self.tokenizer.decode(self.prefix_token_id)):
            special["add_special_tokens"] = False
        return self.tokenizer.encode(string, **special)

    def tok_decode(self, tokens: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _warn_truncation(self, what: str) -> None:
        if not self._truncation_warned:
            logger.warning("%s longer than the compiled length %d: truncated from the left", what, self.max_length)
            self._truncation_warned = True

    def _start_accounting(self) -> None:
        self.seconds_by_type: dict[str, float] = {}
        self.requests_served = 0

    @property
    def eval_seconds(self) -> float:
        """Seconds spent in the request calls lm_eval made, all types together."""
        return sum(self.seconds_by_type.values())

    @contextlib.contextmanager
    def _timed(self, request_type: str, requests: int) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            seconds = time.monotonic() - started
            self.seconds_by_type[request_type] = self.seconds_by_type.get(request_type, 0.0) + seconds
            self.requests_served += requests

    # ---- loglikelihood ------------------------------------------------------------------------------
    def loglikelihood(self, requests: list, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        with self._timed("loglikelihood", len(requests)):
            return super().loglikelihood(requests, disable_tqdm=disable_tqdm)

    def _fit(self, context: list[int], continuation: list[int]) -> tuple[list[int], list[int]]:
        """Left-truncate like lm_eval's hf model: the model sees at most ``max_length`` input tokens."""
        if self.backend == "seq2seq":
            if len(context) > self.device_backend.enc_max_length:
                self._warn_truncation("a context")
                context = context[-self.device_backend.enc_max_length :]
            if len(continuation) > self.max_length:
                self._warn_truncation("a continuation")
                continuation = continuation[-self.max_length :]
            return context, continuation
        whole = context + continuation
        if len(whole) > self.max_length + 1:
            self._warn_truncation("a request")
            whole = whole[-(self.max_length + 1) :]
        if len(continuation) >= len(whole):
            continuation = whole[1:]
        return whole[: len(whole) - len(continuation)], continuation

    def _fit_all(self, requests: list) -> list[tuple[list[int], list[int]]]:
        fitted = []
        for _, context, continuation in requests:
            if not continuation:
                raise ValueError("a loglikelihood request has an empty continuation")
            fitted.append(self._fit(list(context), list(continuation)))
        return fitted

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        fitted = self._fit_all(requests)
        jobs = plan_loglikelihood(fitted, full_logits=self.device_backend.full_logits)
        programs = (
            loglikelihood_program(self.device_backend, list(job.context), [fitted[i][1] for i in job.members])
            for job in jobs
        )
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="rbln loglikelihood")

        def collect(job_index: int, scores: object) -> None:
            members = jobs[job_index].members
            for member, score in zip(members, scores):  # type: ignore[arg-type]
                results[member] = score
                request_str = requests[member][0]
                if request_str is not None:
                    self.cache_hook.add_partial("loglikelihood", request_str, score)
            progress.update(len(members))

        run_programs(self.device_backend, programs, on_result=collect, pad_token=self._pad_token_id())
        progress.close()
        return results  # type: ignore[return-value]

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
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals: list[float] = []
        start = 0
        for request, count in zip(requests, counts):
            total = sum(score for score, _ in scores[start : start + count])
            start += count
            totals.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ---- generation ---------------------------------------------------------------------------------
    def _pad_token_id(self) -> int:
        for candidate in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        with self._timed("generate_until", len(requests)):
            return self._generate_until(requests, disable_tqdm)

    def _generate_until(self, requests: list, disable_tqdm: bool) -> list[str]:
        programs = []
        finishers = []
        for context, gen_kwargs in [request.args for request in requests]:
            program, finish = self._generation_program(context, gen_kwargs)
            programs.append(program)
            finishers.append(finish)
        outputs: list[str | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm, desc="rbln generate_until")

        def collect(index: int, generated: object) -> None:
            text = finishers[index](generated)  # type: ignore[arg-type]
            outputs[index] = text
            self.cache_hook.add_partial("generate_until", requests[index].args, text)
            progress.update(1)

        run_programs(self.device_backend, programs, on_result=collect, pad_token=self._pad_token_id())
        progress.close()
        return outputs  # type: ignore[return-value]

    def _greedy_settings(self, gen_kwargs: dict[str, Any]) -> tuple[list[str], int]:
        """The stop sequences and new-token budget of a ``generate_until`` request; sampling is refused."""
        kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
        eos_text = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        if kwargs.get("do_sample") or float(kwargs.get("temperature") or 0.0) > 0.0:
            raise ConfigError("the rbln model generates greedily; set do_sample=false (temperature 0) in gen_kwargs")
        return until, int(kwargs.pop("max_gen_toks"))

    def _generation_program(self, context: str, gen_kwargs: dict[str, Any]) -> tuple[Program, Callable[[list[int]], str]]:
        """The greedy program for one ``generate_until`` request, and what turns its tokens into the answer."""
        eos_ids = frozenset(i for i in (self.tokenizer.eos_token_id,) if i is not None)
        until, max_gen = self._greedy_settings(gen_kwargs)
        tokens = self._generation_context(context, max_gen)
        stop = _stop_checker(self.tokenizer, until)
        if self.backend == "seq2seq":
            # lm_eval's hf model passes max_length = context length + max_gen_toks to an encoder-decoder's
            # generate(), which counts decoder tokens: follow it (per request) so both score the same text.
            max_gen = len(tokens) + max_gen - 1
        program = greedy_program(self.device_backend, tokens, max_gen, self.max_length, stop, eos_ids)
        return program, lambda generated: postprocess_generated_text(self.tok_decode(generated), until, None)

    def _generation_context(self, context: str, max_gen: int) -> list[int]:
        if self.backend == "seq2seq":
            tokens = self.tokenizer(context)["input_ids"]
            limit = self.device_backend.enc_max_length
        else:
            special: dict[str, bool] = {}
            if has_bos_prefix(context, getattr(self.tokenizer, "bos_token", None)):
                special = {"add_special_tokens": False}
            elif self.add_bos_token is not None:
                special = {"add_special_tokens": self.add_bos_token}
            tokens = self.tokenizer(context, **special)["input_ids"]
            limit = self.max_length - max_gen
            if limit <= 0:
                raise ConfigError(f"max_gen_toks {max_gen} leaves no room for a context in the compiled length {self.max_length}")
        if len(tokens) > limit:
            self._warn_truncation("a generation context")
            tokens = tokens[-limit:]
        return list(tokens)

    def get_model_info(self) -> dict[str, Any]:
        """Provenance recorded in lm_eval's results config: the bundle, toolchain, timings, device counters."""
        key = self.bundle.key
        eval_seconds = self.eval_seconds
        return {
            "rbln": {
                "bundle_digest": self.bundle.digest,
                "bundle_path": str(self.bundle.path),
                "key": key.fields(),
                "toolchain": toolchain_versions(),
                "compiled_now": self.compiled_now,
                "load_seconds": round(self.load_seconds, 3),
                "eval_seconds": round(eval_seconds, 3),
                "eval_seconds_by_request_type": {k: round(v, 3) for k, v in self.seconds_by_type.items()},
                "requests": self.requests_served,
                "requests_per_second": round(self.requests_served / eval_seconds, 3) if eval_seconds else None,
                "batch_size": self.device_backend.batch_size,
                "max_length": self.max_length,
                "device_counters": self.device_counters,
                **({"simulator_counters": _counter_delta(_simulator_counters(), self._sim_baseline)} if self._sim_baseline is not None else {}),
            }
        }


def _simulator_counters() -> dict[str, dict[str, float]] | None:
    """The simulator's own per-graph counters, when the NPU is simulated (a cross-check of ours)."""
    from . import sim

    return sim.counters() if sim.is_active() else None


def _counter_delta(now: dict[str, dict[str, float]] | None, before: dict[str, dict[str, float]]) -> dict[str, dict[str, int]]:
    delta: dict[str, dict[str, int]] = {}
    for graph, values in (now or {}).items():
        old = before.get(graph, {})
        calls = int(values.get("calls", 0) - old.get("calls", 0))
        if calls:
            delta[graph] = {"calls": calls, "tokens": int(values.get("input_tokens", 0) - old.get("input_tokens", 0))}
    return delta


def _stop_checker(tokenizer: Any, until: list[str]):
    """True once the decoded generation contains a stop sequence."""

    def stop(tokens: list[int]) -> bool:
        if not until:
            return False
        text = tokenizer.decode(tokens[-64:], skip_special_tokens=False)
        return any(term in text for term in until)

    return stop


def _parse_device(device: Any) -> int | list[int] | None:
    """``npu:3`` / ``3`` / ``0,1,2,3`` / ``0-3`` → device index or list; None → default placement.

    lm_eval's own device spellings (``cpu``, ``cuda``, ``cuda:0`` — its CLI default) name no NPU and also
    mean the default placement.
    """
    if device is None:
        return None
    text = str(device).strip().lower()
    if text in ("", "cpu", "npu", "auto", "cuda", "mps") or text.startswith("cuda:"):
        return None
    text = text.removeprefix("npu:").removeprefix("rbln:")
    try:
        if "-" in text:
            first, last = (int(part) for part in text.split("-", 1))
            return list(range(first, last + 1))
        if "," in text:
            return [int(part) for part in text.split(",")]
        return int(text)
    except ValueError:
        raise ConfigError(f"device {device!r} is not an NPU index (npu:N, N, N-M or N,M,…)") from None
