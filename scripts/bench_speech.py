"""Speech recognition throughput: seconds of audio transcribed per wall second, a bundle on the simulator
against transformers on this CPU.

Usage: python scripts/bench_speech.py [--clips 24] [--batch-sizes 1,4] [--latency-ms 0,5]

Builds the tiny Whisper and Wav2Vec2 CTC models of the tests (``tests/speechmodels.py``: seeded, no hub), compiles
each at every batch size and transcribes ``--clips`` synthetic clips (0.3–0.9 s) through ``rbln-audio``, with every
simulated runtime call taking ``--latency-ms`` of device time. The reference is transformers float32 on the host:
Whisper's batched greedy ``generate``, the CTC model's batched forward. Per row: the device calls (encoder,
decoder) and the decoder calls per generated token (1 + prompt steps per clip: the KV cache is kept).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RBLN_EVAL_SIMULATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from speechmodels import MAX_AUDIO_SAMPLES, SAMPLING_RATE, speech_clips, tiny_wav2vec2, tiny_whisper  # noqa: E402

MAX_GEN = 16


class Request:
    task_name = "bench"

    def __init__(self, args: tuple) -> None:
        self.args = args


def transcribe_on_bundle(model: Path, kind: str, batch: int, clips: list[np.ndarray], store: Path) -> dict[str, Any]:
    from rbln_eval.api import CompileOptions, open_lm
    from rbln_eval.build.workflow import compile_bundle, plan_compile

    options = CompileOptions(batch_size=batch, max_seq_len=MAX_AUDIO_SAMPLES if kind == "ctc" else None)
    from rbln_eval.store import Store

    bundle = compile_bundle(plan_compile(str(model), options), Store(store)).bundle
    gen = {"until": ["<|endoftext|>"], "max_gen_toks": MAX_GEN}
    requests = [Request(("", gen, {"audio": [{"array": clip, "sampling_rate": SAMPLING_RATE}]})) for clip in clips]
    with open_lm(bundle) as lm:
        lm.generate_until(requests[:batch], disable_tqdm=True)  # warm-up
        before = lm.device_counters
        started = time.perf_counter()
        texts = lm.generate_until(requests, disable_tqdm=True)
        wall = time.perf_counter() - started
        counters = {graph: {k: v - before.get(graph, {}).get(k, 0) for k, v in values.items()} for graph, values in lm.device_counters.items()}
    return {"wall": wall, "texts": texts, "counters": counters}


def transcribe_on_transformers(model: Path, kind: str, batch: int, clips: list[np.ndarray]) -> dict[str, Any]:
    from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoProcessor

    processor = AutoProcessor.from_pretrained(model)
    net = (AutoModelForSpeechSeq2Seq if kind == "whisper" else AutoModelForCTC).from_pretrained(model).eval()
    texts: list[str] = []
    started = time.perf_counter()
    for start in range(0, len(clips), batch):
        chunk = clips[start : start + batch]
        with torch.no_grad():
            if kind == "whisper":
                features = processor.feature_extractor(chunk, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
                out = net.generate(features, max_new_tokens=MAX_GEN)
                texts += processor.batch_decode(out, skip_special_tokens=True)
            else:  # each clip normalized on its own, padded with zeros, its own frames decoded: as the bundle
                rows = [processor(clip, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_values[0] for clip in chunk]
                values = torch.stack([torch.nn.functional.pad(r, (0, MAX_AUDIO_SAMPLES - len(r))) for r in rows])
                ids = net(values).logits.argmax(-1)
                frames = [int(net._get_feat_extract_output_lengths(torch.tensor(len(r)))) for r in rows]
                texts += [processor.decode(row[:n]) for row, n in zip(ids, frames)]
    return {"wall": time.perf_counter() - started, "texts": texts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--batch-sizes", default="1,4")
    parser.add_argument("--latency-ms", default="0,5", help="simulated device time per runtime call, comma-separated")
    args = parser.parse_args()
    import logging

    logging.disable(logging.WARNING)
    import transformers

    transformers.logging.set_verbosity_error()
    import rbln_eval.sim as sim

    sim.activate()
    clips = speech_clips(args.clips)
    seconds = sum(len(c) for c in clips) / SAMPLING_RATE
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        models = {"whisper": tiny_whisper(str(root / "models")), "ctc": tiny_wav2vec2(str(root / "models"))}
        for kind, model in models.items():
            for batch in [int(b) for b in args.batch_sizes.split(",")]:
                transcribe_on_transformers(model, kind, batch, clips[:batch])  # warm-up
                reference = transcribe_on_transformers(model, kind, batch, clips)
                for latency in [float(x) for x in args.latency_ms.split(",")]:
                    os.environ["RBLN_EVAL_SIM_LATENCY_MS"] = str(latency)
                    ours = transcribe_on_bundle(model, kind, batch, clips, root / "store")
                    counters = ours["counters"]
                    same = sum(a == b for a, b in zip(ours["texts"], reference["texts"]))
                    rows.append((
                        kind, batch, f"{latency:g}", f"{seconds / ours['wall']:.1f}", f"{seconds / reference['wall']:.1f}",
                        counters.get("encoder", {}).get("calls", 0), counters.get("decoder", {}).get("calls", 0),
                        f"{same}/{len(clips)}",
                    ))
    header = ("model", "batch", "ms/call", "audio s/s sim", "audio s/s hf", "enc calls", "dec calls", "same text")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print(f"{args.clips} clips, {seconds:.1f} s of audio; {os.cpu_count()} host cores")
    for row in [header, *rows]:
        print("  ".join(str(v).rjust(w) for v, w in zip(row, widths)))


if __name__ == "__main__":
    main()
