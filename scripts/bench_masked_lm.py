"""Device cost of pseudo-log-likelihood scoring of a masked LM: encoder calls and padded tokens per request.

Usage: RBLN_EVAL_SIMULATE=1 python scripts/bench_masked_lm.py [--limit 8] [--ppl-limit 2] [--batch-sizes 4,8] [--max-seq-len 128]

Builds a demo-sized BERT (the shape of the embedded demo Llama: hidden 128, 3 layers, 4 heads; a WordPiece
vocabulary trained on the demo corpus; seeded, untrained), compiles it at each batch size and scores the
embedded demo tasks (``demo_cloze``, ``demo_mc``: loglikelihood; ``demo_ppl``: loglikelihood_rolling) with
both PLL variants. Per task it prints the requests, the continuation tokens scored, the masked copies run
(identical copies, such as the one-token choices of a question, run once), the encoder calls and padded
device tokens per request, and the ideal ⌈copies / batch⌉ the packing reaches.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("RBLN_EVAL_SIMULATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rbln_eval import demo  # noqa: E402
from rbln_eval.api import CompileOptions, open_lm  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402
from rbln_eval.store import Store  # noqa: E402

TASKS = ("demo_cloze", "demo_mc", "demo_ppl")
VARIANTS = ("within_word_l2r", "original")


def build_model(root: Path, max_positions: int) -> Path:
    """A demo-sized BERT masked LM with a WordPiece vocabulary of the demo corpus, saved under ``root``."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    text = (demo.DEMO_DIR / "corpus.txt").read_text(encoding="utf-8")
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(text.splitlines(), vocab_size=2000, min_frequency=1)
    out = root / "demo-bert"
    out.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(out))
    tokenizer = BertTokenizer(vocab=str(out / "vocab.txt"), do_lower_case=True, model_max_length=max_positions)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
        max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    BertForMaskedLM(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def task_requests(limit: int, ppl_limit: int) -> dict[str, tuple[str, list[Any]]]:
    """Per task, its request type and lm_eval instances (built exactly as lm_eval builds them)."""
    from lm_eval.tasks import TaskManager, get_task_dict

    manager = TaskManager(include_path=str(demo.tasks_dir()), include_defaults=False)
    out: dict[str, tuple[str, list[Any]]] = {}
    for name, task in get_task_dict(list(TASKS), manager).items():
        task.build_all_requests(limit=ppl_limit if name == "demo_ppl" else limit, rank=0, world_size=1)
        out[name] = (task.OUTPUT_TYPE, list(task.instances))
    return out


def measure(lm: Any, request_type: str, instances: list[Any]) -> dict[str, float]:
    """Score ``instances`` on a fresh lm; its counters per request."""
    method = "loglikelihood_rolling" if request_type == "loglikelihood_rolling" else "loglikelihood"
    getattr(lm, method)(instances, disable_tqdm=True)
    encoder = lm.device_counters.get("encoder", {"calls": 0, "tokens": 0})
    requests = len(instances)
    return {
        "requests": requests, "tokens": lm.scored_tokens / requests, "copies": lm.masked_copies / requests,
        "calls": encoder["calls"] / requests, "padded": encoder["tokens"] / requests,
        "ideal": math.ceil(lm.masked_copies / lm.shape.batch_size) / requests,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=8, help="documents of demo_cloze and demo_mc")
    parser.add_argument("--ppl-limit", type=int, default=2, help="documents of demo_ppl (every token is a masked copy)")
    parser.add_argument("--batch-sizes", default="4,8")
    parser.add_argument("--max-seq-len", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = build_model(root, args.max_seq_len)
        store = Store(root / "store")
        requests = task_requests(args.limit, args.ppl_limit)
        print(f"demo-sized BERT (hidden 128, 3 layers), compiled length {args.max_seq_len}")
        header = f"{'task':<11}{'batch':>6}  {'pll':<16}{'requests':>9}{'tokens/req':>11}{'copies/req':>11}"
        print(header + f"{'calls/req':>10}{'ideal':>8}{'padded tok/req':>15}")
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            bundle = compile_bundle(plan_compile(str(model), CompileOptions(batch_size=batch, max_seq_len=args.max_seq_len)), store).bundle
            for variant in VARIANTS:
                for task, (request_type, instances) in requests.items():
                    with open_lm(bundle, pll=variant) as lm:
                        row = measure(lm, request_type, instances)
                    print(
                        f"{task:<11}{batch:>6}  {variant:<16}{row['requests']:>9}{row['tokens']:>11.1f}{row['copies']:>11.1f}"
                        f"{row['calls']:>10.2f}{row['ideal']:>8.2f}{row['padded']:>15.0f}"
                    )


if __name__ == "__main__":
    main()
