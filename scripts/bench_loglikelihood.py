"""Device cost of loglikelihood scoring: rbln-eval's adapter vs re-running prefill for every prefix.

Usage: RBLN_EVAL_SIMULATE=1 python scripts/bench_loglikelihood.py [--limit 40] [--batch-size 4]

For the embedded demo tasks (cloze, multiple choice, rolling perplexity) and the embedded causal demo model,
prints device calls and padded device tokens per request for
  * the adapter on a full-logit bundle (one prefill per context group),
  * the adapter on a last-logit bundle (prefill the context, teacher-forced decode steps),
  * the per-prefix baseline: one last-logit prefill of context + continuation[:i] for every continuation
    token (implemented here only, as the approach the adapter replaces),
and checks that all three give the same log-probabilities. Then times cold (compile + load + first score)
against warm (load + first score).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=40, help="documents per task")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()
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
