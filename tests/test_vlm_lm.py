"""The lm_eval model ``rbln-vlm`` on a local image task: generations identical to ``hf-multimodal``'s, sample by
sample; multimodal log-likelihoods equal to a transformers forward within 1e-4 (``hf-multimodal`` has none)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from rbln_eval.api import CompileOptions
from rbln_eval.api import open_lm
from rbln_eval.multimodal import MultimodalRequestError, RBLNVLM
from rbln_eval.store import Store
from rbln_eval.build.workflow import compile_bundle, plan_compile
from vlmchecks import evaluate, mc_requests, responses
from vlmmodels import image_tasks, tiny_llava

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("vlm-lm")
    model_dir = tiny_llava(str(root))
    store = Store(root / "store")
    bundle = compile_bundle(plan_compile(str(model_dir), CompileOptions(batch_size=2), npu="RBLN-CA25"), store).bundle
    return {"model_dir": model_dir, "store": store, "bundle": bundle, "tasks": image_tasks(str(root))}


@pytest.fixture(scope="module")
def vlm(env: dict[str, Any]) -> RBLNVLM:
    return open_lm(env["bundle"])


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_generations_identical_to_hf_multimodal(env: dict[str, Any], chat: bool) -> None:
    from lm_eval.models.hf_vlms import HFMultimodalLM

    hf = HFMultimodalLM(pretrained=str(env["model_dir"]), dtype="float32", device="cpu", batch_size=1)
    reference = responses(evaluate(hf, env["tasks"], "vlm_gen", chat), "vlm_gen")
    vlm = open_lm(env["bundle"])  # a fresh model: chat templating is per model, as in hf
    before = vlm.device_counters.get("vision", {"calls": 0})["calls"]
    ours = responses(evaluate(vlm, env["tasks"], "vlm_gen", chat), "vlm_gen")
    assert len(ours) == len(reference) == 6
    print("generations:", [r[0] for r in ours])
    assert ours == reference
    assert len({r[0][0] for r in reference}) > 1  # the answers differ from image to image / prompt to prompt
    assert vlm.device_counters["vision"]["calls"] - before == 6  # one vision pass per document


def _transformers_loglikelihood(hf: Any, processor: Any, context: str, continuation: str, images: list) -> tuple[float, bool]:
    """Sum of log-probs of the continuation tokens after context + images, from one transformers forward."""
    whole = processor(images=images, text=[context + continuation], return_tensors="pt")
    context_ids = processor(images=images, text=[context], return_tensors="pt")["input_ids"][0]
    ids = whole["input_ids"][0]
    target = ids[len(context_ids) :]
    with torch.no_grad():
        logits = hf(input_ids=ids[None], pixel_values=whole["pixel_values"]).logits[0]
    scored = torch.log_softmax(logits[len(context_ids) - 1 : len(ids) - 1].float(), dim=-1)
    logprob = float(scored.gather(1, target[:, None]).sum())
    return logprob, bool((scored.argmax(-1) == target).all())


@pytest.mark.parametrize("logits", ["all", "last"])
def test_multimodal_loglikelihood_matches_a_transformers_forward(env: dict[str, Any], vlm: RBLNVLM, logits: str) -> None:
    """Full-logit bundles read every continuation token off the image prefill; last-logit bundles teacher-force
    them through decode steps after it."""
    from lm_eval.api.instance import Instance
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if logits == "last":
        request = plan_compile(str(env["model_dir"]), CompileOptions(batch_size=2, logits="last"), npu="RBLN-CA25")
        vlm = open_lm(compile_bundle(request, env["store"]).bundle)
        assert not vlm.shape.full_logits

    hf = AutoModelForImageTextToText.from_pretrained(env["model_dir"], dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(env["model_dir"])
    requests = mc_requests(env["tasks"])
    # the first document's context and choices again with another document's image: scored apart, not shared
    first = [r for r in requests if r[0] == requests[0][0]]
    other_image = requests[-1][2]
    requests += [(context, choice, other_image) for context, choice, _ in first]
    instances = [
        Instance("loglikelihood", doc={}, arguments=(c, x, {"visual": imgs}), idx=i) for i, (c, x, imgs) in enumerate(requests)
    ]
    ours = vlm.loglikelihood(instances, disable_tqdm=True)
    reference = [_transformers_loglikelihood(hf, processor, c, x, imgs) for c, x, imgs in requests]
    worst = max(abs(a[0] - b[0]) for a, b in zip(ours, reference))
    print(f"{logits}-logit bundle: max |delta log-prob| over {len(requests)} multimodal requests: {worst:.2e}")
    assert worst <= TOLERANCE, worst
    assert [a[1] for a in ours] == [b[1] for b in reference]
    # the image changes the scores: same text, another image, other log-likelihoods
    same_text = ours[: len(first)], ours[-len(first) :]
    assert all(abs(a[0] - b[0]) > 1e-3 for a, b in zip(*same_text))


def test_multiple_choice_task_scored_by_loglikelihood(env: dict[str, Any], vlm: RBLNVLM) -> None:
    results = evaluate(vlm, env["tasks"], "vlm_mc")
    samples = sorted(results["samples"]["vlm_mc"], key=lambda s: s["doc_id"])
    docs = [json.loads(line) for line in (env["tasks"] / "vlm_mc.jsonl").read_text().splitlines()]
    # acc is the argmax of the logged log-likelihoods against each document's label
    expected = sum(int(max(range(len(s["resps"])), key=lambda i: s["resps"][i][0][0]) == d["label"]) for s, d in zip(samples, docs))
    assert results["results"]["vlm_mc"]["acc,none"] == pytest.approx(expected / len(docs))
    assert results["config"]["rbln"]["multimodal"]["model_type"] == "llava"


def test_requests_that_do_not_fit_are_refused(vlm: RBLNVLM, env: dict[str, Any]) -> None:
    from lm_eval.api.instance import Instance

    _, _, images = mc_requests(env["tasks"])[0]
    long_context = "<image> " + "word " * 400
    request = Instance("loglikelihood", doc={}, arguments=(long_context, " end", {"visual": images}), idx=0)
    with pytest.raises(MultimodalRequestError, match=r"does not fit the compiled length 256: compile with a larger --max-seq-len"):
        vlm.loglikelihood([request], disable_tqdm=True)
    rolling = Instance("loglikelihood_rolling", doc={}, arguments=("text", {"visual": images}), idx=0)
    with pytest.raises(MultimodalRequestError, match="loglikelihood_rolling has no meaning for image requests"):
        vlm.loglikelihood_rolling([rolling])


def test_rbln_vlm_is_registered_and_built_from_model_args(env: dict[str, Any]) -> None:
    from lm_eval.api.registry import get_model

    cls = get_model("rbln-vlm")
    assert cls is RBLNVLM
    lm = cls.create_from_arg_string(f"artifact={env['bundle'].digest[:12]},store={env['store'].root}")
    assert lm.bundle.digest == env["bundle"].digest and lm.image_token == "<image>"
    assert lm.shape.batch_size == 2
