"""Image classification throughput and how busy the (simulated) device is kept.

Usage: python scripts/bench_classify.py [--images 256] [--batch-size 8] [--latency-ms 20]

Builds the tiny ViT of the tests (``tests/imagemodels.py``: seeded, no hub), writes ``--images`` PNG files (64 px,
resized to 32 by the image processor) as a local dataset task, compiles the ViT at ``--batch-size`` and scores the
task with every simulated device call taking ``--latency-ms``. The device's busy fraction is the simulated calls'
time over the wall time of the scoring: host preparation (decoding, resizing, normalizing the next chunk of images
on host threads) overlaps the device calls, so the device waits only when preparing a batch costs more than
running it. Against: transformers float32 on this CPU, the same images prepared by the same processor, batch by
batch (preparation not overlapped).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RBLN_EVAL_SIMULATE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from imagemodels import LABELS, TASK_YAML, make_image, tiny_image_classifier  # noqa: E402


def write_task(root: Path, images: int) -> Path:
    rows = []
    for i in range(images):
        make_image(i, size=64).save(root / f"img{i}.png")
        rows.append({"file": f"img{i}.png", "label": LABELS[i % len(LABELS)]})
    (root / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "cls_bench.yaml").write_text(TASK_YAML.format(name="cls_bench", data="bench.jsonl"))
    return root


def on_transformers(model_dir: Path, task_dir: Path, images: int, batch: int) -> float:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageClassification
    from transformers.models.auto.image_processing_auto import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(model_dir, backend="pil")
    model = AutoModelForImageClassification.from_pretrained(model_dir).eval()
    started = time.perf_counter()
    for start in range(0, images, batch):
        pictures = [Image.open(task_dir / f"img{i}.png").convert("RGB") for i in range(start, min(images, start + batch))]
        with torch.no_grad():
            model(**processor(images=pictures, return_tensors="pt"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    os.environ["RBLN_EVAL_SIM_LATENCY_MS"] = str(args.latency_ms)
    import rbln_eval.sim as sim

    sim.activate()
    from rbln_eval.api import CompileOptions, evaluate_dataset_bundle, open_classifier
    from rbln_eval.build.workflow import compile_bundle, plan_compile
    from rbln_eval.evaluation.evaluate import EvalOptions
    from rbln_eval.store import Store

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        task_dir = write_task(root, args.images)
        model = tiny_image_classifier(str(root / "models"), "vit")
        bundle = compile_bundle(plan_compile(str(model), CompileOptions(batch_size=args.batch_size)), Store(root / "store")).bundle
        hf_seconds = on_transformers(model, task_dir, args.images, args.batch_size)
        with open_classifier(bundle) as classifier:
            options = EvalOptions(tasks=["cls_bench"], include_path=str(task_dir), limit=float(args.batch_size))
            evaluate_dataset_bundle(classifier, options)  # warm-up: the dataset cached, the runtime loaded
            before = sim.counters()
            started = time.perf_counter()
            evaluate_dataset_bundle(classifier, EvalOptions(tasks=["cls_bench"], include_path=str(task_dir)))
            wall = time.perf_counter() - started
            after = sim.counters()
        calls = sum(v["calls"] for v in after.values()) - sum(v["calls"] for v in before.values())
        device = sum(v["seconds"] for v in after.values()) - sum(v["seconds"] for v in before.values())
    print(f"{args.images} images (64 px → 32 px), batch {args.batch_size}, {args.latency_ms:g} ms per device call, "
          f"{os.cpu_count()} host cores")
    print(f"{'side':>22}  {'wall s':>7}  {'images/s':>8}  {'device calls':>12}  {'device busy':>11}")
    print(f"{'rbln (simulated NPU)':>22}  {wall:7.2f}  {args.images / wall:8.1f}  {calls:12d}  {device / wall:10.1%}")
    print(f"{'transformers (CPU)':>22}  {hf_seconds:7.2f}  {args.images / hf_seconds:8.1f}  {'-':>12}  {'-':>11}")


if __name__ == "__main__":
    main()
