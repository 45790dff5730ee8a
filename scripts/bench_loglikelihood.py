"""Device cost of loglikelihood scoring: rbln-eval's adapter vs re-running prefill for every prefix.

Usage: RBLN_EVAL_SIMULATE=1 python scripts/bench_loglikelihood.py [--limit 40] [--batch-size 4]
       RBLN_EVAL_SIMULATE=1 python scripts/bench_loglikelihood.py --fewshot [--fewshot-limit 8] [--wall-time]

For the embedded demo tasks (cloze, multiple choice, rolling perplexity) and the embedded causal demo model,
prints device calls and padded device tokens per request for
  * the adapter on a full-logit bundle (one prefill per context group),
  * the adapter on a last-logit bundle (prefill the context, teacher-forced decode steps),
  * the per-prefix baseline: one last-logit prefill of context + continuation[:i] for every continuation
    token (implemented here only, as the approach the adapter replaces),
and checks that all three give the same log-probabilities. Then times cold (compile + load + first score)
against warm (load + first score).

``--fewshot``: ``demo_mc`` at 0, 5 and 25 shots on the demo model given a 1,536-token compiled length (25-shot
contexts are 1,000-1,300 tokens): prefill calls and padded tokens per question on a full-logit bundle before
(the whole context prefilled once per multi-token choice: ``share_context_chunks = False``) and after (the
context's whole chunks once per question, each choice from the last chunk boundary), and the device calls of a
last-logit bundle (context prefill + teacher-forced decode steps). The ``wino_local`` rows (``tests/data/wino``:
lm_eval's Winogrande prompts, partial evaluation) at 0 and 5 shots: before, each of a question's two contexts
prefilled whole; after, their common whole chunks once, each context's rest and the continuation from there. ``--wall-time`` adds the whole-task wall
time of the 25-shot task with every device call taking at least 50 ms (``RBLN_EVAL_SIM_LATENCY_MS``), before
and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RBLN_EVAL_SIMULATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from rbln_eval import demo  # noqa: E402
from rbln_eval.api import CompileOptions  # noqa: E402
from rbln_eval.api import open_lm  # noqa: E402
from rbln_eval.lm import RBLNLM  # noqa: E402
from rbln_eval.store import Store  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402

TASKS = ("demo_cloze", "demo_mc", "demo_ppl")


def task_requests(lm: RBLNLM, limit: int) -> dict[str, tuple[str, list[Any]]]:
    """Per task, its request type and lm_eval instances (built exactly as lm_eval builds them)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(demo.tasks_dir()), include_defaults=False)
    out: dict[str, tuple[str, list[Any]]] = {}
    for name, task in get_task_dict(list(TASKS), manager).items():
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        instances = [inst for inst in task.instances]
        out[name] = (task.OUTPUT_TYPE, instances)
    return out


def token_pairs(lm: RBLNLM, kind: str, instances: list[Any]) -> list[tuple[list[int], list[int]]]:
    """The (context, continuation) token pairs lm_eval scores for these instances."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    pairs = []
    for inst in instances:
        if kind == "loglikelihood_rolling":
            windows = get_rolling_token_windows(
                token_list=lm.tok_encode(inst.args[0]), prefix_token=lm.prefix_token_id,
                max_seq_len=lm.max_length, context_len=1,
            )
            pairs.extend(fit(lm, *make_disjoint_window(w)) for w in windows)
        else:
            context, continuation = inst.args
            pairs.append(fit(lm, *lm._encode_pair(context, continuation)))
    return pairs


def fit(lm: RBLNLM, context: Any, continuation: Any) -> tuple[list[int], list[int]]:
    """A request as the bundle's family fits it into the compiled length."""
    fitted = lm.family.fit(lm.shape, list(context), list(continuation))
    return fitted.context, fitted.continuation


def run_adapter(lm: RBLNLM, kind: str, instances: list[Any]) -> tuple[list[float], dict[str, Any]]:
    lm.executor.replica.backend.counters.clear()
    if kind == "loglikelihood_rolling":
        scores = lm.loglikelihood_rolling(instances, disable_tqdm=True)
    else:
        scores = [s for s, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    return scores, lm.executor.replica.backend.counters.as_dict()


def run_baseline(lm: RBLNLM, pairs: list[tuple[list[int], list[int]]]) -> tuple[list[float], dict[str, int]]:
    """Re-prefill context + continuation[:i] for every continuation token; read the last position's logits."""
    backend = lm.executor.replica.backend
    calls = tokens = 0
    scores = []
    for context, continuation in pairs:
        total = 0.0
        for i, target in enumerate(continuation):
            prefix = context + continuation[:i]
            logits = backend.open(0, prefix)[-1]
            chunks = math.ceil(len(prefix) / backend.prefill_chunk)
            calls += chunks
            tokens += chunks * backend.prefill_chunk
            total += float(torch.log_softmax(logits.float(), -1)[target])
        scores.append(total)
    return scores, {"calls": calls, "tokens": tokens}


def sum_counters(counters: dict[str, dict[str, int]]) -> tuple[int, int]:
    return sum(c["calls"] for c in counters.values()), sum(c["tokens"] for c in counters.values())


FEWSHOT_TASK = "demo_mc"
FEWSHOT_SHOTS = (0, 5, 25)
WINO_TASK = "wino_local"  # lm_eval's Winogrande prompts (partial evaluation) over local rows
WINO_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "wino"
FEWSHOT_ROWS = tuple((FEWSHOT_TASK, shots) for shots in FEWSHOT_SHOTS) + ((WINO_TASK, 0), (WINO_TASK, 5))
FEWSHOT_MAX_LENGTH = 1536
LATENCY_MS = 50


def fewshot_requests(shots: int, limit: int, name: str = FEWSHOT_TASK) -> list[Any]:
    """The loglikelihood instances of task ``name`` at ``shots`` shots, sampled as ``simple_evaluate`` samples them."""
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=[str(demo.tasks_dir()), str(WINO_DIR)], include_defaults=False)
    task = get_task_dict([name], manager)[name]
    task.set_config("num_fewshot", shots)
    task.set_fewshot_seed(seed=1234)
    task.build_all_requests(limit=limit, rank=0, world_size=1)
    return list(task.instances)


def long_demo_model(directory: str) -> str:
    """The demo causal model with room for 25-shot prompts (its rotary positions work at any length)."""
    target = Path(directory) / "llama-long"
    shutil.copytree(demo.causal_model_dir(), target)
    config = json.loads((target / "config.json").read_text())
    config["max_position_embeddings"] = FEWSHOT_MAX_LENGTH
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return str(target)


def score_fewshot(lm: Any, instances: list[Any], shared: bool) -> tuple[list[float], dict[str, Any], float]:
    """Log-likelihoods, device counters and wall seconds of ``instances`` (``shared``: the new schedule)."""
    lm.share_context_chunks = shared
    lm.executor.replica.backend.counters.clear()
    started = time.perf_counter()
    scores = [s for s, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    return scores, lm.executor.replica.backend.counters.as_dict(), time.perf_counter() - started


def fewshot_main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = long_demo_model(tmp)
        store = Store(Path(tmp) / "store")
        lms = {
            logits: open_lm(compile_bundle(plan_compile(model, CompileOptions(batch_size=args.batch_size, logits=logits)), store).bundle)
            for logits in ("all", "last")
        }
        chunk = lms["all"].shape.prefill_chunk
        print(
            f"device cost per question, demo llama at {FEWSHOT_MAX_LENGTH} tokens, batch size "
            f"{args.batch_size}, {args.fewshot_limit} questions, prefill chunk {chunk}"
        )
        header = (
            f"{'task':>10} |{'shots':>5} |{'context':>8} |{'full-logit before':>18} |{'tokens':>8} |{'after':>6} |{'tokens':>8} |"
            f"{'tokens ×':>9} |{'last-logit calls':>17} |{'tokens':>8} | max |Δlogp| before, last"
        )
        print(header)
        print("-" * len(header))
        for name, shots in FEWSHOT_ROWS:
            instances = fewshot_requests(shots, args.fewshot_limit, name)
            questions = len({inst.doc_id for inst in instances})
            contexts = {inst.doc_id: len(lms["all"]._encode_pair(*inst.args)[0]) for inst in instances}
            before_scores, before, _ = score_fewshot(lms["all"], instances, shared=False)
            after_scores, after, _ = score_fewshot(lms["all"], instances, shared=True)
            last_scores, last, _ = score_fewshot(lms["last"], instances, shared=True)
            same = max(abs(a - b) for a, b in zip(after_scores, before_scores))
            delta = max(abs(a - c) for a, c in zip(after_scores, last_scores))
            bc, bt = sum_counters(before)
            ac, at = sum_counters(after)
            lc, lt = sum_counters(last)
            q = questions
            print(
                f"{name:>10} |{shots:>5} |{sum(contexts.values()) / q:>8.0f} |{bc / q:>18.2f} |{bt / q:>8.0f} |{ac / q:>6.2f} |"
                f"{at / q:>8.0f} |{bt / at:>9.2f} |{lc / q:>17.2f} |{lt / q:>8.0f} | {same:.1e}, {delta:.1e}"
            )
        print(f"(prefill calls of the 25-shot rows are bounded by ceil(context / {chunk}) + choices per question;")
        print(f" {WINO_TASK}: a question's two contexts share their whole chunks up to the blank, prefilled once)")
        if args.wall_time:
            os.environ["RBLN_EVAL_SIM_LATENCY_MS"] = str(LATENCY_MS)
            instances = fewshot_requests(25, args.fewshot_limit)
            print()
            print(f"25-shot {FEWSHOT_TASK}, {args.fewshot_limit} questions, every device call >= {LATENCY_MS} ms: whole-task wall time")
            for label, shared in (("before", False), ("after", True)):
                _, counters, seconds = score_fewshot(lms["all"], instances, shared=shared)
                calls, _ = sum_counters(counters)
                print(f"  {label:>6}: {seconds:7.2f} s   {calls} device calls (x {LATENCY_MS} ms = {calls * LATENCY_MS / 1000:.2f} s)")
        for lm in lms.values():
            lm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=40, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--fewshot", action="store_true", help="the few-shot rows instead of the request types")
    parser.add_argument("--fewshot-limit", type=int, default=8, help="questions per few-shot setting")
    parser.add_argument("--wall-time", action="store_true", help=f"with --fewshot: 25-shot wall time at {LATENCY_MS} ms per call")
    args = parser.parse_args()
    if args.fewshot:
        fewshot_main(args)
        return
    model = str(demo.causal_model_dir())
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(tmp)
        lms = {}
        timings = {}
        for logits in ("all", "last"):
            request = plan_compile(model, CompileOptions(batch_size=args.batch_size, logits=logits))
            started = time.perf_counter()
            bundle = compile_bundle(request, store).bundle
            compiled = time.perf_counter() - started
            lms[logits] = open_lm(bundle)
            timings[logits] = (compiled, lms[logits].load_seconds)
        requests = task_requests(lms["all"], args.limit)
        print(f"device cost per request, demo llama, batch size {args.batch_size}, limit {args.limit}")
        header = f"{'task':<11}|{'reqs':>5} |{'full-logit calls':>17} |{'tokens':>8} |{'last-logit calls':>17} |{'tokens':>8} |{'re-prefill calls':>17} |{'tokens':>9} | max |Δlogp|"
        print(header)
        print("-" * len(header))
        for name, (kind, instances) in requests.items():
            full_scores, full = run_adapter(lms["all"], kind, instances)
            last_scores, last = run_adapter(lms["last"], kind, instances)
            pairs = token_pairs(lms["last"], kind, instances)
            base_scores, base = run_baseline(lms["last"], pairs)
            if kind == "loglikelihood_rolling":  # baseline scores are per window: sum per document
                per_doc, start = [], 0
                for inst in instances:
                    n = len(token_pairs(lms["last"], kind, [inst]))
                    per_doc.append(sum(base_scores[start : start + n]))
                    start += n
                base_scores = per_doc
            delta = max(max(abs(a - b), abs(a - c)) for a, b, c in zip(full_scores, last_scores, base_scores))
            n = len(instances)
            fc, ft = sum_counters(full)
            lc, lt = sum_counters(last)
            print(
                f"{name:<11}|{n:>5} |{fc / n:>17.2f} |{ft / n:>8.1f} |{lc / n:>17.2f} |{lt / n:>8.1f} |"
                f"{base['calls'] / n:>17.2f} |{base['tokens'] / n:>9.1f} | {delta:.1e}"
            )
        print()
        print("time to first score (s): cold = compile + load + first request, warm = load + first request")
        first = requests["demo_cloze"][1][:1]
        for logits in ("all", "last"):
            compiled, load = timings[logits]
            started = time.perf_counter()
            lms[logits].loglikelihood(first, disable_tqdm=True)
            score = time.perf_counter() - started
            print(f"  {logits:>4}-logit bundle: cold {compiled + load + score:6.2f}   warm {load + score:6.2f}   (compile {compiled:.2f}, load {load:.2f}, first score {score:.3f})")


if __name__ == "__main__":
    main()
