#!/usr/bin/env python
"""Data-parallel speedup on the simulated node: K = 1, 2, 4, 8 replicas of the demo bundle (a node has 8 NPUs).

Every runtime call takes a simulated device time (``RBLN_EVAL_SIM_LATENCY_MS``, 50 ms by default here),
as NPU calls dominate a real evaluation; the simulator's arithmetic runs inside it. K=1 is the in-process
replica that ``rbln-eval run`` uses; K>1 are worker processes (``run --data-parallel K``). Worker start-up
is reported apart from evaluation time. The script fails if any K gives a different score or logged sample
than K=1.

The tasks are the demo's four (loglikelihood (cloze), multiple choice, rolling perplexity and generation)
and ``bench_gen``, ``--generations`` more greedy generations written for this run: sentences of the demo
corpus cut 3 to 6 words before their end, generated up to the full stop as ``demo_gen`` does. Every document
of each, unless ``--limit`` says otherwise. "Busiest worker" is the largest share of the device calls any one
worker made (1/K is a perfect balance). "CPU cores" is the CPU time of this process and its workers over the
wall time of ``simple_evaluate``: the simulated devices compute on the host, so when it nears the host's core
count the run is bound by the host's CPU, not by the device time. A second table splits the scoring time by
request type (lm_eval hands the model one call per type, so each ends when its slowest worker does).

Usage::

    python scripts/bench_parallel.py                       # demo model, every document, K = 1, 2, 4, 8
    python scripts/bench_parallel.py --model DIR --limit 24 --replicas 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RBLN_EVAL_SIMULATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TASKS = ["demo_cloze", "demo_mc", "demo_ppl", "demo_gen"]
GENERATION_TASK = "bench_gen"

GENERATION_YAML = """\
task: bench_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
custom_dataset: !function bench_data.load
output_type: generate_until
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{target}}}}"
target_delimiter: " "
generation_kwargs:
  until: [".", "\\n"]
  do_sample: false
  temperature: 0.0
  max_gen_toks: 24
filter_list:
  - name: strip
    filter:
      - function: remove_whitespace
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

GENERATION_LOADER = '''\
import json

import datasets


def load(data_files, **_metadata):
    return datasets.DatasetDict({
        split: datasets.Dataset.from_list([json.loads(line) for line in open(path, encoding="utf-8") if line.strip()])
        for split, path in data_files.items()
    })
'''


def parse_args() -> argparse.Namespace:
    from rbln_eval import demo

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(demo.causal_model_dir()), help="causal model directory (default: the demo model)")
    parser.add_argument("--limit", type=int, default=None, help="documents per task (default: all)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="simulated device time per runtime call (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="compiled batch size (default: %(default)s)")
    parser.add_argument("--replicas", default="1,2,4,8", help="values of K, the first one the reference (default: %(default)s)")
    parser.add_argument("--generations", type=int, default=300, help="documents of bench_gen; 0 leaves it out (default: %(default)s)")
    parser.add_argument("--store", default=None, help="store directory (default: a temporary one)")
    return parser.parse_args()


def generation_docs(corpus: str, count: int) -> list[dict]:
    """``count`` completions: each sentence of 8-40 words ending in a word and a full stop, after the sentence
    before it, cut 3, 4, 5 and 6 words before its end (in turns), the cut words being the target."""
    split = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"(])")
    sentences = []
    for paragraph in corpus.split("\n"):
        previous = ""
        for sentence in filter(None, split.split(paragraph)):
            words = sentence.split()
            if 8 <= len(words) <= 40 and re.fullmatch(r"[A-Za-z]{3,}\.", words[-1]) and len(previous.split()) <= 40:
                sentences.append((previous, words))
            previous = sentence
    docs = []
    for cut in (4, 3, 5, 6):
        for previous, words in sentences:
            target = " ".join(words[-cut:])[:-1]
            if len(docs) < count and not any(c in target for c in ".\n\"'"):
                docs.append({"context": " ".join([previous, *words[:-cut]]).strip(), "target": target})
    return docs


def write_generation_task(directory: Path, count: int) -> None:
    from rbln_eval import demo

    docs = generation_docs((demo.DEMO_DIR / "corpus.txt").read_text(encoding="utf-8"), count)
    if len(docs) < count:
        raise SystemExit(f"the corpus makes only {len(docs)} generation documents, asked for {count}")
    data = directory / "bench_gen.jsonl"
    data.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    (directory / "bench_gen.yaml").write_text(GENERATION_YAML.format(data=json.dumps(str(data))), encoding="utf-8")
    (directory / "bench_data.py").write_text(GENERATION_LOADER, encoding="utf-8")


def tree_cpu_seconds() -> dict[int, float]:
    """CPU seconds of this process and of every process below it (workers, their fork server), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    mine = {os.getpid()}
    grew = True
    while grew:
        below = {pid for pid, (parent, _) in stats.items() if parent in mine} - mine
        grew = bool(below)
        mine |= below
    return {pid: stats[pid][1] for pid in mine if pid in stats}


def samples(results: dict) -> dict:
    return {
        task: [[r[0] for r in s["resps"]] for s in sorted(items, key=lambda s: s["doc_id"])]
        for task, items in results["samples"].items()
    }


def main() -> int:
    args = parse_args()
    os.environ["RBLN_EVAL_SIM_LATENCY_MS"] = str(args.latency_ms)
    import torch
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from rbln_eval import demo
    from rbln_eval.api import CompileOptions, open_lm
    from rbln_eval.build.workflow import compile_bundle, plan_compile
    from rbln_eval.store import Store

    if not os.path.isdir(args.model):
        print(f"no model at {args.model}: run scripts/train_demo_models.py or pass --model DIR", file=sys.stderr)
        return 2
    replicas = [int(k) for k in args.replicas.split(",")]
    torch.set_num_threads(1)  # as each worker does on this host
    store = Store(args.store or tempfile.mkdtemp(prefix="bench-parallel-"))
    bundle = compile_bundle(plan_compile(args.model, CompileOptions(batch_size=args.batch_size)), store).bundle
    tasks, include = list(TASKS), [str(demo.tasks_dir())]
    if args.generations:
        extra = Path(tempfile.mkdtemp(prefix="bench-parallel-tasks-"))
        write_generation_task(extra, args.generations)
        tasks.append(GENERATION_TASK)
        include.append(str(extra))
    manager = TaskManager(include_path=include, include_defaults=False)

    def evaluate(lm) -> tuple[dict, float, float]:
        started, cpu = time.monotonic(), tree_cpu_seconds()
        results = simple_evaluate(model=lm, tasks=tasks, limit=args.limit, log_samples=True, task_manager=manager)
        used = sum(seconds - cpu.get(pid, 0.0) for pid, seconds in tree_cpu_seconds().items())
        return results, time.monotonic() - started, used

    rows = []
    baseline = None
    for k in replicas:
        started = time.monotonic()
        lm = open_lm(bundle, device=0) if k == 1 else open_lm(bundle, devices=f"0-{k - 1}")
        startup = time.monotonic() - started
        try:
            results, seconds, cpu = evaluate(lm)
        finally:
            lm.close()
        info = results["config"]["rbln"]
        counters = info["device_counters"]
        calls = sum(c["calls"] for c in counters.values())
        scores = {t: {m: v for m, v in r.items() if "stderr" not in m} for t, r in results["results"].items()}
        scoring = info["eval_seconds"]
        if baseline is None:
            baseline = (scores, samples(results), seconds, scoring, info["eval_seconds_by_request_type"])
        elif (scores, samples(results)) != baseline[:2]:
            print(f"K={k} scores differ from K={replicas[0]}", file=sys.stderr)
            return 1
        workers = info.get("workers") or [{"device_counters": counters}]
        busiest = max(sum(c["calls"] for c in w["device_counters"].values()) for w in workers) / calls
        rows.append((k, startup, seconds, scoring, calls, busiest, baseline[2] / seconds, baseline[3] / scoring,
                     cpu / seconds, info["eval_seconds_by_request_type"]))
        print(f"K={k}: {seconds:.1f}s", file=sys.stderr)

    requests = results["config"]["rbln"]["requests"]
    documents = "every document" if args.limit is None else f"limit {args.limit}"
    generations = sum(len(v) for t, v in baseline[1].items() if t in ("demo_gen", GENERATION_TASK))
    print(f"{', '.join(tasks)}; {documents}; {requests} requests ({generations} generations); "
          f"{args.latency_ms:g} ms per call; batch {args.batch_size}; {os.cpu_count()} host cores; "
          f"scores identical for every K")
    print("start-up: loading the replicas (the first pool also starts the workers' fork server, which later ones reuse); "
          "wall: simple_evaluate; scoring: time in the model's request calls")
    header = (f"{'K':>3} | {'start-up s':>10} | {'wall s':>7} | {'scoring s':>9} | {'device calls':>12} | "
              f"{'busiest worker':>14} | {'CPU cores':>9} | {'wall speedup':>12} | {'scoring speedup':>15}")
    print(header)
    print("-" * len(header))
    for k, startup, seconds, scoring, calls, busiest, speedup, scoring_speedup, cores, _ in rows:
        print(f"{k:>3} | {startup:>10.1f} | {seconds:>7.1f} | {scoring:>9.1f} | {calls:>12} | {busiest:>14.1%} | "
              f"{cores:>9.2f} | {speedup:>11.2f}x | {scoring_speedup:>14.2f}x")
    types = list(baseline[4])
    print()
    print(f"scoring seconds by request type (speedup over K={replicas[0]})")
    print(" K | " + " | ".join(f"{t:>24}" for t in types))
    for k, *_, by_type in rows:
        cells = [f"{by_type[t]:>6.1f} s ({baseline[4][t] / by_type[t]:>4.2f}x)" for t in types]
        print(f"{k:>2} | " + " | ".join(f"{c:>24}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
