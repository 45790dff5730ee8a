"""Causal LMs compiled by the real optimum-rbln on the simulator match transformers on CPU."""

from __future__ import annotations

import pytest
import torch

from rbln_eval.sim.parity import check_causal_parity, make_prompts

ATOL = 1e-4


@pytest.mark.parametrize(
    ("arch", "batch_size", "num_devices", "kwargs"),
    [
        ("llama", 1, 1, {}),  # grouped-query attention; prompt of 140 > chunk 128, max_seq_len 200
        ("llama", 4, 4, {}),
        ("gpt2", 1, 1, {}),
        ("qwen2", 4, 1, {}),
        ("opt", 1, 1, {}),
        ("mistral", 1, 1, {"logits_to_keep": (1,)}),  # sliding window (48) over a 140-token prompt
        (
            "llama2k",
            2,
            1,
            # flash attention: two partitions of 1024, blocks sized after compilation
            {
                "max_seq_len": 2048,
                "rbln_attn_impl": "flash_attn",
                "rbln_kvcache_partition_len": 1024,
                "prompt_lengths": [1030, 20],
            },
        ),
    ],
    ids=["llama-bs1", "llama-bs4-tp4", "gpt2-bs1", "qwen2-bs4", "opt-bs1", "mistral-swa-bs1", "llama-flash-bs2"],
)
def test_causal_parity(tiny_model_dir, arch, batch_size, num_devices, kwargs):
    report = check_causal_parity(tiny_model_dir(arch), batch_size=batch_size, num_devices=num_devices, **kwargs)
    print(report.model, report.max_abs_diff, report.compile_seconds, report.first_token_seconds)
    report.assert_ok(ATOL)
    assert report.tokens_equal and all(report.tokens_equal.values())
    assert report.max_abs_diff


def test_compile_without_runtimes_then_load(tiny_model_dir, tmp_path):
    from optimum.rbln import RBLNAutoModelForCausalLM
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dir("qwen2")
    compiled = RBLNAutoModelForCausalLM.from_pretrained(
        model_dir, export=True, rbln_max_seq_len=200, rbln_npu="RBLN-CA25", rbln_create_runtimes=False
    )
    ids, mask = make_prompts(1, 256, [12])
    with pytest.raises(RuntimeError, match="runtime is not available"):
        compiled(input_ids=ids, attention_mask=mask)
    compiled.save_pretrained(tmp_path / "bundle")

    loaded = RBLNAutoModelForCausalLM.from_pretrained(tmp_path / "bundle", export=False)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=mask).logits[:, -1]
        want = reference(input_ids=ids).logits[:, -1]
    assert float((got - want).abs().max()) <= ATOL

    header = loaded.compiled_models[0].metadata
    assert header["target"] == "SIM-RBLN-CA25"
    assert header["npu"] == "RBLN-CA25"


def test_flash_blocks_sized_after_compilation(tiny_model_dir, tmp_path):
    from optimum.rbln import RBLNAutoModelForCausalLM

    model = RBLNAutoModelForCausalLM.from_pretrained(
        tiny_model_dir("llama2k"),
        export=True,
        rbln_max_seq_len=2048,
        rbln_attn_impl="flash_attn",
        rbln_kvcache_partition_len=1024,
        rbln_batch_size=2,
        rbln_create_runtimes=False,
    )
    blocks = model.rbln_config.kvcache_num_blocks
    assert blocks == model.rbln_config.num_full_blocks == 4
    model.save_pretrained(tmp_path / "bundle")
    loaded = RBLNAutoModelForCausalLM.from_pretrained(tmp_path / "bundle", export=False, rbln_create_runtimes=False)
    for compiled in loaded.compiled_models:
        static = compiled.static_buffers
        assert static and all(entry["shape"][0] == blocks for entry in static.values())
        sizes = compiled.exp_get_dram_tensor_sizes()
        assert set(sizes) == set(static)


def test_missing_device_is_a_clear_error(tiny_model_dir, tmp_path):
    from optimum.rbln import RBLNAutoModelForCausalLM

    compiled = RBLNAutoModelForCausalLM.from_pretrained(
        tiny_model_dir("gpt2"), export=True, rbln_max_seq_len=128, rbln_create_runtimes=False
    )
    compiled.save_pretrained(tmp_path / "bundle")
    with pytest.raises(RuntimeError, match="NPU device 11 does not exist: the simulated node has 8 device"):
        RBLNAutoModelForCausalLM.from_pretrained(tmp_path / "bundle", export=False, rbln_device=11)
    with pytest.raises(RuntimeError, match="compiled for 1 device"):
        RBLNAutoModelForCausalLM.from_pretrained(tmp_path / "bundle", export=False, rbln_device=[0, 1])
    model = RBLNAutoModelForCausalLM.from_pretrained(tmp_path / "bundle", export=False, rbln_device=7)
    assert model.model[0].devices == [7]
