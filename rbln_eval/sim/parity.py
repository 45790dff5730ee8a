"""Parity checks: a model compiled by optimum-rbln on the simulator against plain transformers.

`check_causal_parity(model_dir)` and `check_seq2seq_parity(model_dir)` compile a Hugging Face
model directory with the real optimum-rbln (the simulator must be active), save the compiled
model, load it back with `export=False`, and compare in float32 with transformers on CPU:

- causal LMs, compiled with `logits_to_keep=0`: prefill logits at every real position, then the
  per-step logits and tokens of greedy `generate()` (prefill + decode graph);
  compiled with the default `logits_to_keep=1`: last-token prefill logits and greedy tokens.
- seq2seq LMs: per-step logits and tokens of greedy `generate()` (encoder + decoder graphs).

Prompts are random token ids of different lengths (left padding when `batch_size > 1`).
`ParityReport.assert_ok(atol)` raises `AssertionError` on a logit difference above `atol` or any
differing token.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["ParityReport", "check_causal_parity", "check_seq2seq_parity", "make_prompts"]


@dataclass
class ParityReport:
    """Outcome of a parity check; differences are max absolute logit differences."""

    model: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    tokens_equal: dict[str, bool] = field(default_factory=dict)
    compile_seconds: dict[str, float] = field(default_factory=dict)
    first_token_seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, Any] = field(default_factory=dict)

    def assert_ok(self, atol: float = 1e-4) -> None:
        bad = {k: v for k, v in self.max_abs_diff.items() if not v <= atol}
        wrong = [k for k, ok in self.tokens_equal.items() if not ok]
        if bad or wrong:
            raise AssertionError(
                f"{self.model}: logit differences above {atol}: {bad}; differing greedy tokens: {wrong} "
                f"({ {k: self.tokens.get(k) for k in wrong} })"
            )


def make_prompts(
    batch_size: int, vocab_size: int, lengths: list[int], seed: int = 0, pad_token_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random left-padded prompts: `(input_ids, attention_mask)` of shape `[batch, max(lengths)]`."""
    generator = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((batch_size, width), pad_token_id, dtype=torch.long)
    mask = torch.zeros((batch_size, width), dtype=torch.long)
    for row in range(batch_size):
        n = lengths[row % len(lengths)]
        low = 3 if vocab_size > 8 else 0
        ids[row, width - n :] = torch.randint(low, vocab_size, (n,), generator=generator)
        mask[row, width - n :] = 1
    return ids, mask


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _greedy(model: Any, ids: torch.Tensor, mask: torch.Tensor, steps: int, pad: int) -> Any:
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=steps,
        min_new_tokens=steps,
        do_sample=False,
        num_beams=1,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=pad,
    )


def _compare_generation(report: ParityReport, label: str, got: Any, ref: Any) -> None:
    report.tokens_equal[f"{label}/greedy"] = torch.equal(got.sequences, ref.sequences)
    report.tokens[f"{label}/greedy"] = (got.sequences.tolist(), ref.sequences.tolist())
    diffs = [_max_diff(g, r) for g, r in zip(got.logits, ref.logits, strict=False)]
    report.max_abs_diff[f"{label}/generate_logits"] = max(diffs, default=0.0)


def _compile_and_reload(
    cls: Any, model_dir: str, work: Path, label: str, report: ParityReport, **rbln_kwargs: Any
) -> Any:
    started = time.perf_counter()
    compiled = cls.from_pretrained(model_dir, export=True, **rbln_kwargs)
    report.compile_seconds[label] = time.perf_counter() - started
    target = work / label
    compiled.save_pretrained(target)
    del compiled
    return cls.from_pretrained(target, export=False)


def check_causal_parity(
    model_dir: str | Path,
    *,
    batch_size: int = 1,
    max_seq_len: int = 200,
    num_devices: int = 1,
    prompt_lengths: list[int] | None = None,
    new_tokens: int = 6,
    work_dir: str | Path | None = None,
    logits_to_keep: tuple[int, ...] = (0, 1),
    **rbln_kwargs: Any,
) -> ParityReport:
    """Check a causal LM directory (see module docstring); returns the report, does not assert."""
    from optimum.rbln import RBLNAutoModelForCausalLM
    from transformers import AutoModelForCausalLM

    model_dir = str(model_dir)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = hf.config.get_text_config()
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    if prompt_lengths:
        lengths = list(prompt_lengths)
    else:
        lengths = [17, 9, 5, 140][:batch_size] if batch_size > 1 else [140]
    ids, mask = make_prompts(batch_size, config.vocab_size, lengths, pad_token_id=pad)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    report = ParityReport(model=f"{Path(model_dir).name} bs={batch_size} tp={num_devices}")

    with torch.no_grad():
        ref_logits = hf(input_ids=ids, attention_mask=mask, position_ids=positions).logits
        ref_gen = _greedy(hf, ids, mask, new_tokens, pad)

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        for keep in logits_to_keep:
            label = f"keep{keep}"
            model = _compile_and_reload(
                RBLNAutoModelForCausalLM,
                model_dir,
                Path(tmp),
                label,
                report,
                rbln_batch_size=batch_size,
                rbln_max_seq_len=max_seq_len,
                rbln_num_devices=num_devices,
                rbln_logits_to_keep=keep,
                **rbln_kwargs,
            )
            started = time.perf_counter()
            with torch.no_grad():
                logits = model(input_ids=ids[:1, -lengths[0] :], attention_mask=mask[:1, -lengths[0] :]).logits
                report.first_token_seconds[label] = time.perf_counter() - started
                logits = model(input_ids=ids, attention_mask=mask).logits
            if keep == 0:
                valid = mask.bool()
                report.max_abs_diff[f"{label}/prefill_logits"] = _max_diff(logits[valid], ref_logits[valid])
            else:
                report.max_abs_diff[f"{label}/prefill_logits"] = _max_diff(logits[:, -1], ref_logits[:, -1])
            with torch.no_grad():
                got = _greedy(model, ids, mask, new_tokens, pad)
            _compare_generation(report, label, got, ref_gen)
            del model
    return report


def check_seq2seq_parity(
    model_dir: str | Path,
    *,
    batch_size: int = 1,
    enc_max_seq_len: int = 64,
    dec_max_seq_len: int = 32,
    num_devices: int = 1,
    prompt_lengths: list[int] | None = None,
    new_tokens: int = 6,
    work_dir: str | Path | None = None,
    **rbln_kwargs: Any,
) -> ParityReport:
    """Check a seq2seq LM directory (see module docstring); returns the report, does not assert."""
    from optimum.rbln import RBLNAutoModelForSeq2SeqLM
    from transformers import AutoModelForSeq2SeqLM

    model_dir = str(model_dir)
    hf = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    config = hf.config
    pad = config.pad_token_id if config.pad_token_id is not None else 0
    lengths = prompt_lengths or [23, 11, 7, 30][:batch_size]
    # seq2seq encoders take right-padded inputs
    ids, mask = make_prompts(batch_size, config.vocab_size, lengths, pad_token_id=pad)
    order = torch.argsort(1 - mask, dim=1, stable=True)
    ids, mask = torch.gather(ids, 1, order), torch.gather(mask, 1, order)
    report = ParityReport(model=f"{Path(model_dir).name} bs={batch_size} tp={num_devices}")

    with torch.no_grad():
        ref_gen = _greedy(hf, ids, mask, new_tokens, pad)
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        model = _compile_and_reload(
            RBLNAutoModelForSeq2SeqLM,
            model_dir,
            Path(tmp),
            "seq2seq",
            report,
            rbln_batch_size=batch_size,
            rbln_enc_max_seq_len=enc_max_seq_len,
            rbln_dec_max_seq_len=dec_max_seq_len,
            rbln_num_devices=num_devices,
            **rbln_kwargs,
        )
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=pad)
            report.first_token_seconds["seq2seq"] = time.perf_counter() - started
            got = _greedy(model, ids, mask, new_tokens, pad)
        _compare_generation(report, "seq2seq", got, ref_gen)
    return report
