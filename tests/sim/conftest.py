"""Fixtures of the simulator tests: the simulator is active for the whole test session."""

from __future__ import annotations

from pathlib import Path

import pytest

import rbln_eval.sim as sim

try:
    sim.activate()
except sim.SimulatorConflictError:  # a real rebel SDK is installed: these tests need the simulator
    collect_ignore_glob = ["test_*.py"]

import torch  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    """Tiny models run faster on one thread, and do not fight other processes for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_configs() -> dict:
    from transformers import (
        BartConfig,
        GPT2Config,
        LlamaConfig,
        MistralConfig,
        OPTConfig,
        Qwen2Config,
        T5Config,
    )

    decoder = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return {
        "llama": ("LlamaForCausalLM", LlamaConfig(**decoder)),
        "llama2k": ("LlamaForCausalLM", LlamaConfig(**{**decoder, "max_position_embeddings": 2048})),
        "qwen2": ("Qwen2ForCausalLM", Qwen2Config(**decoder)),
        "mistral": ("MistralForCausalLM", MistralConfig(**decoder, sliding_window=48)),
        "gpt2": (
            "GPT2LMHeadModel",
            GPT2Config(vocab_size=256, n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=0, eos_token_id=0),
        ),
        "opt": (
            "OPTForCausalLM",
            OPTConfig(
                vocab_size=256,
                hidden_size=64,
                ffn_dim=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=256,
                word_embed_proj_dim=64,
            ),
        ),
        "t5": (
            "T5ForConditionalGeneration",
            T5Config(
                vocab_size=256,
                d_model=64,
                d_kv=16,
                d_ff=128,
                num_layers=2,
                num_heads=4,
                decoder_start_token_id=0,
                pad_token_id=0,
                eos_token_id=1,
            ),
        ),
        "bart": (
            "BartForConditionalGeneration",
            BartConfig(
                vocab_size=256,
                d_model=64,
                encoder_layers=2,
                decoder_layers=2,
                encoder_attention_heads=4,
                decoder_attention_heads=4,
                encoder_ffn_dim=128,
                decoder_ffn_dim=128,
                max_position_embeddings=128,
            ),
        ),
    }


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """`tiny_model_dir(name)`: a saved random tiny model (seeded), built once per session."""
    import transformers

    configs = _tiny_configs()
    built: dict[str, Path] = {}

    def build(name: str) -> Path:
        if name not in built:
            class_name, config = configs[name]
            torch.manual_seed(0)
            model = getattr(transformers, class_name)(config).eval()
            path = tmp_path_factory.mktemp(f"hf-{name}")
            model.save_pretrained(path)
            built[name] = path
        return built[name]

    return build
