"""Image-text-to-text bundles through the CLI: compile, run (the multimodal model), lm-eval passthrough,
compare against hf-multimodal, and sharing through a directory remote and a Hub repo (local Hub server)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from hubserver import HubServer
from lmhelpers import cli_in_process
from rbln_eval.cli import main
from rbln_eval.store import Store
from remotehelpers import TOKEN, cli, ok
from vlmmodels import image_tasks, make_image, tiny_llava

REPO = "org/vlm"


def rbln_eval(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``rbln-eval ARGS`` in this process: exit status, stdout, stderr."""
    code = 0
    try:
        main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vlm-cli")
    return {"root": root, "model_dir": tiny_llava(str(root)), "tasks": image_tasks(str(root)), "store": root / "store"}


@pytest.fixture(scope="module")
def digest(env: dict[str, Any]) -> str:
    code, out, err = cli_in_process("compile", str(env["model_dir"]), "--npu", "RBLN-CA25", "--batch-size", "2", "--store", str(env["store"]))
    assert code == 0, err[-2000:]
    assert "(image-text-to-text," in err
    return out.split()[0]


def test_run_uses_the_multimodal_model(env: dict[str, Any], digest: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, err = rbln_eval(
        capsys, "run", "--artifact", digest[:10], "--tasks", "vlm_gen,vlm_mc", "--include_path", str(env["tasks"]),
        "--limit", "3", "--store", str(env["store"]), "--output_path", str(tmp_path),
    )
    assert code == 0, err[-2000:]
    assert "vlm_gen" in out and "vlm_mc" in out and "vision: 6 calls" in err
    results = json.loads(next(tmp_path.rglob("results_*.json")).read_text())
    assert results["config"]["model"] == "rbln-vlm"
    assert results["config"]["rbln"]["key"]["model_class"] == "image-text-to-text"


def test_lm_eval_passthrough_with_rbln_vlm(env: dict[str, Any], digest: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = rbln_eval(
        capsys, "lm-eval", "run", "--model", "rbln-vlm", "--model_args", f"artifact={digest[:10]},store={env['store']}",
        "--tasks", "vlm_gen", "--include_path", str(env["tasks"]), "--limit", "2",
    )
    assert code == 0, err[-2000:]
    assert "rbln-vlm" in out and "vlm_gen" in out


def test_data_parallel_replicas_score_like_one(env: dict[str, Any], digest: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    def samples(where: Path) -> dict[str, list[Any]]:
        results = json.loads(next(where.rglob("results_*.json")).read_text())
        assert results["config"]["model"] == "rbln-vlm"
        logged = {}
        for task in ("vlm_gen", "vlm_mc"):
            lines = next(where.rglob(f"samples_{task}_*.jsonl")).read_text().splitlines()
            logged[task] = [json.loads(line)["resps"] for line in sorted(lines, key=lambda l: json.loads(l)["doc_id"])]
        return logged

    common = ["--tasks", "vlm_gen,vlm_mc", "--include_path", str(env["tasks"]), "--limit", "4", "--log_samples",
              "--store", str(env["store"])]
    code, _, err = rbln_eval(capsys, "run", "--artifact", digest, *common, "--output_path", str(tmp_path / "one"))
    assert code == 0, err[-2000:]
    code, _, err = rbln_eval(capsys, "run", "--artifact", digest, *common, "--data-parallel", "2", "--output_path", str(tmp_path / "two"))
    assert code == 0, err[-2000:]
    served = [int(n) for n in re.findall(r"replica \d on \S+: (\d+) requests", err)]
    assert len(served) == 2 and min(served) > 0, err[-1000:]  # both replicas scored image requests
    one, two = samples(tmp_path / "one"), samples(tmp_path / "two")
    assert one == two  # generations and log-likelihoods bit-identical
    assert len(one["vlm_gen"]) == 4 and len(one["vlm_mc"]) == 4


def test_compare_against_hf_multimodal(env: dict[str, Any], digest: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    code, out, err = rbln_eval(
        capsys, "compare", digest, "--tasks", "vlm_gen,vlm_mc", "--include_path", str(env["tasks"]), "--limit", "4",
        "--tolerance", "1e-4", "--store", str(env["store"]), "--output", str(report_path),
        "--model_args", "image_string=<image>,max_images=1",
    )
    assert code == 0, (out[-2000:], err[-2000:])
    report = json.loads(report_path.read_text())
    assert report["reference"]["model"] == "hf-multimodal"
    assert report["reference"]["settings"] == {"image_string": "<image>", "max_images": 1}  # both sides took them
    from rbln_eval.evaluation.compare import reference_lm

    reference = reference_lm(Store(env["store"]).resolve(digest), settings=report["reference"]["settings"])
    assert reference.image_token == "<image>" and reference.max_images == 1
    tasks = {task["task"]: task for task in report["tasks"]}
    assert tasks["vlm_gen"]["generation_agreement"] == 1.0
    assert tasks["vlm_mc"]["argmax_agreement"] == 1.0
    assert tasks["vlm_mc"]["logprobs"] == 16 and tasks["vlm_mc"]["max_abs_logprob_delta"] <= 1e-4


def test_directory_remote_push_pull(env: dict[str, Any], digest: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from conftest import tree_snapshot
    from rbln_eval.multimodal import RBLNVLM

    share, other = tmp_path / "share", tmp_path / "other-store"
    share.mkdir()
    for store in (env["store"], other):
        assert rbln_eval(capsys, "remote", "add", "nfs", str(share), "--store", str(store))[0] == 0
    code, _, err = rbln_eval(capsys, "push", digest, "--remote", "nfs", "--store", str(env["store"]))
    assert code == 0, err
    code, _, err = rbln_eval(capsys, "pull", digest[:8], "--store", str(other))
    assert code == 0, err
    pulled = Store(other).lookup(digest)
    assert pulled is not None and Store(other).verify(pulled) == []
    assert tree_snapshot(pulled.path) == tree_snapshot(Store(env["store"]).lookup(digest).path)
    lm = RBLNVLM(artifact=digest, store=str(other))
    assert lm.bundle.path == pulled.path and lm.shape.batch_size == 2


def test_hub_remote_push_pull_and_plain_load(env: dict[str, Any], digest: str, tmp_path: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    server = HubServer(tmp_path / "hub", token=TOKEN).start()
    try:
        def machine(home: str) -> dict[str, str]:
            return {"HF_ENDPOINT": server.url, "HF_TOKEN": TOKEN, "HF_HOME": str(tmp_path / home), "HF_HUB_OFFLINE": "0",
                    "HF_HUB_DISABLE_TELEMETRY": "1"}

        pushed = ok(cli("push", digest, "--repo", REPO, "--private", "--store", str(env["store"]), env=machine("a")))
        assert "rbln-eval pull" in pushed.stderr
        other = tmp_path / "second-machine"
        script = textwrap.dedent(
            f"""
            import sys, torch
            import rbln_eval.sim
            rbln_eval.sim.activate()
            from rbln_eval.cli import main
            try:
                main(["pull", "hf://{REPO}@{digest[:8]}", "--store", {str(other)!r}])
            except SystemExit as exc:
                assert not exc.code, exc.code
            from rbln_eval.store.tensors import prepare_load_dir
            from rbln_eval.store import Store
            from optimum.rbln import RBLNAutoModelForImageTextToText
            bundle = Store({str(other)!r}).lookup({digest!r})
            assert Store({str(other)!r}).verify(bundle) == []
            model = RBLNAutoModelForImageTextToText.from_pretrained(str(prepare_load_dir(bundle)), export=False)
            enc = torch.load({str(tmp_path / 'enc.pt')!r}, weights_only=True)
            out = model.generate(**enc, max_new_tokens=6, do_sample=False)
            print("tokens", out[0].tolist())
            """
        )
        processor = AutoProcessor.from_pretrained(env["model_dir"])
        enc = processor(images=[make_image(3), make_image(4)], text=["<image> The picture shows", "<image> It is"], return_tensors="pt", padding="longest")
        enc = {"input_ids": enc["input_ids"][:1], "attention_mask": enc["attention_mask"][:1], "pixel_values": enc["pixel_values"][:1]}
        # optimum-rbln's generate runs the compiled batch: two rows, the same prompt
        enc = {k: torch.cat([v, v]) for k, v in enc.items()}
        torch.save(enc, tmp_path / "enc.pt")
        full = {**os.environ, "RBLN_EVAL_SIMULATE": "1", **machine("b")}
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=full, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        server.stop()
    hf = AutoModelForImageTextToText.from_pretrained(env["model_dir"], dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf.generate(**{k: v[:1] for k, v in enc.items()}, max_new_tokens=6, do_sample=False)[0].tolist()
    assert f"tokens {expected}" in result.stdout
