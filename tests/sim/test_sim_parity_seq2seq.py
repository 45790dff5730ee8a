"""Seq2seq LMs compiled by the real optimum-rbln on the simulator match transformers on CPU."""

from __future__ import annotations

import pytest

from rbln_eval.sim.parity import check_seq2seq_parity

ATOL = 1e-4


@pytest.mark.parametrize(
    ("arch", "batch_size", "num_devices"),
    [("t5", 1, 1), ("t5", 4, 4), ("bart", 1, 1), ("bart", 4, 1)],
    ids=["t5-bs1", "t5-bs4-tp4", "bart-bs1", "bart-bs4"],
)
def test_seq2seq_parity(tiny_model_dir, arch, batch_size, num_devices):
    report = check_seq2seq_parity(tiny_model_dir(arch), batch_size=batch_size, num_devices=num_devices)
    print(report.model, report.max_abs_diff, report.compile_seconds, report.first_token_seconds)
    report.assert_ok(ATOL)
    assert report.tokens_equal == {"seq2seq/greedy": True}
