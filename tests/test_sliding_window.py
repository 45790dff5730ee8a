"""Causal LMs with sliding-window layers (a tiny Mistral whose window, 8 tokens, is shorter than its prompts).

optimum-rbln compiles their KV cache as a window kept in turn, not by position, and returns the last prefill
position's logits only. So a full-logit bundle is refused at compile (it would fail on its first prompt), and a
last-logit bundle scores every continuation of a shared context after a prefill of its own (a decode step cannot go
back past the window): log-likelihoods equal lm_eval's ``hf`` model within 1e-4, greedy generations identical.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rbln_eval.sim as sim

try:
    sim.activate()
except sim.SimulatorConflictError:  # a real rebel SDK is installed: these tests need the simulator
    pytest.skip("a real rebel SDK is installed", allow_module_level=True)

from lm_eval.api.instance import Instance  # noqa: E402

from lmhelpers import MODEL_DIRS  # noqa: E402
from rbln_eval.api import CompileOptions, open_lm  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402
from rbln_eval.errors import ConfigError  # noqa: E402
from rbln_eval.store import Store  # noqa: E402

WINDOW = 8
CONTEXTS = ("The quick brown fox jumps over the lazy dog and", "Every object has an identity, a type and")
ENDINGS = (" runs away", " sleeps all day long", " a value")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    out = tmp_path_factory.mktemp("sliding") / "tiny-mistral"
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIRS["causal"])
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=64, sliding_window=WINDOW,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    MistralForCausalLM(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_full_logit_bundle_is_refused_and_nothing_is_stored(model: Path, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with pytest.raises(ConfigError) as caught:
        compile_bundle(plan_compile(str(model), CompileOptions(batch_size=2)), store)
    assert str(caught.value) == (
        "--logits all with mistral: optimum-rbln 0.12.0 returns one logit row per prefill chunk of a model with "
        "sliding-window layers (optimum/rbln/transformers/models/decoderonly/decoderonly_architecture.py:"
        "DecoderOnlyForCausalLM.forward): compile it with --logits last"
    )
    assert not any((tmp_path / "store").rglob("*.rbln"))


def test_shared_contexts_score_and_generate_as_transformers(model: Path, tmp_path: Path) -> None:
    from lm_eval.models.huggingface import HFLM

    bundle = compile_bundle(plan_compile(str(model), CompileOptions(batch_size=2, logits="last")), Store(tmp_path / "store")).bundle
    requests = [Instance("loglikelihood", {}, (c, e), i) for i, (c, e) in enumerate((c, e) for c in CONTEXTS for e in ENDINGS)]
    generations = [Instance("generate_until", {}, (c, {"until": ["\n\n"], "max_gen_toks": 12}), i) for i, c in enumerate(CONTEXTS)]
    reference = HFLM(pretrained=str(model), dtype="float32", device="cpu", batch_size=1)
    expected = reference.loglikelihood(requests)
    expected_text = reference.generate_until(generations)
    with open_lm(bundle) as lm:
        assert lm.shape.sliding_window == WINDOW and not lm.shape.steps_go_back
        ours = lm.loglikelihood(requests)
        text = lm.generate_until(generations)
    assert max(abs(a - b) for (a, _), (b, _) in zip(ours, expected)) <= 1e-4
    assert [greedy for _, greedy in ours] == [greedy for _, greedy in expected]
    assert text == expected_text and all(text)
