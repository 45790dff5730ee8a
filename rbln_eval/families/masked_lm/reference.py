"""The reference of ``rbln-eval compare`` for masked-LM bundles: the same pseudo-log-likelihood
(:class:`~rbln_eval.families.masked_lm.lm.MaskedLM`) over the float32 transformers model on the host.

:class:`HostExecutor` runs the masked copies on :class:`~rbln_eval.families.masked_lm.backend.TorchMaskedBackend`
with the same scheduler as a replica, so only the model differs between the two sides.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from rbln_eval.core.programs import run_programs
from rbln_eval.core.work import ScoreWork
from rbln_eval.errors import ConfigError
from rbln_eval.families.masked_lm.backend import TorchMaskedBackend
from rbln_eval.families.masked_lm.lm import MaskedLM
from rbln_eval.families.masked_lm.programs import masked_copy_program

#: The length of the reference rows when the bundle's is not given.
REFERENCE_LENGTH = 512


class HostExecutor:
    """An :class:`~rbln_eval.core.work.Executor` over a transformers masked LM in this process."""

    bundle = None
    groups = None
    load_seconds = 0.0

    def __init__(self, family: Any, model: Any, tokenizer: Any, batch_size: int, max_length: int) -> None:
        self.family = family  # the masked-LM family, whose programs the bundle runs
        self.tokenizer = tokenizer
        self.backend = TorchMaskedBackend(model, batch_size, max_length)
        self.shape = self.backend.shape

    def run(self, items: Sequence[ScoreWork], costs: Sequence[int], sizes: Sequence[int], on_done: Callable[[int], None]) -> list[Any]:
        results: list[Any] = [None] * len(items)

        def collect(index: int, value: Any) -> None:
            results[index] = value
            on_done(sizes[index])

        programs = (masked_copy_program(self.backend, work.context, work.continuations) for work in items)
        run_programs(self.backend, programs, on_result=collect, pad_token=self.backend.pad_token_id)
        return results

    def counters(self) -> dict[str, dict[str, int]]:
        return self.backend.counters.as_dict()

    def describe(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


class MaskedReferenceLM(MaskedLM):
    """:class:`MaskedLM` over a :class:`HostExecutor`."""

    MODEL_NAME = "hf-pll"

    def __init__(self, executor: HostExecutor, pretrained: str, pll: str | None = None) -> None:
        super().__init__(executor, **({"pll": pll} if pll else {}))
        self.pretrained = pretrained

    def get_model_info(self) -> dict[str, Any]:
        return {"reference": {"pretrained": self.pretrained, "dtype": "float32", "pll": self.pll, "max_length": self.max_length}}


def masked_reference_lm(
    family: Any, pretrained: str, revision: str | None, device: str, max_length: int | None, batch_size: int,
    pll: str | None = None,
) -> MaskedReferenceLM:
    """The float32 transformers model of ``pretrained``, scored like the bundle (at ``max_length`` if given)."""
    import torch
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    kwargs: dict[str, Any] = {"revision": revision} if revision else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(pretrained, **kwargs)
        model = AutoModelForMaskedLM.from_pretrained(pretrained, dtype=torch.float32, **kwargs).to(device).eval()
    except OSError as exc:
        raise ConfigError(f"cannot load the reference model {pretrained}: {exc}") from None
    length = max_length or min(REFERENCE_LENGTH, int(getattr(model.config, "max_position_embeddings", REFERENCE_LENGTH)))
    return MaskedReferenceLM(HostExecutor(family, model, tokenizer, batch_size, length), pretrained, pll)
