#!/usr/bin/env python
"""Train the embedded demo models and write the demo task data.

Builds a small English corpus from the Python language reference that ships
with CPython (``pydoc_data/topics.py``), trains one byte-level BPE tokenizer,
a tiny Llama causal LM and a tiny T5 seq2seq LM on it, and writes the JSONL
data of the ``demo_*`` lm_eval tasks drawn from the same text.

Everything is seeded, and each model is trained on one CPU thread with
deterministic algorithms (the two models train in two processes at once), so
two runs on the same machine produce byte-identical files. Takes about 6.5
CPU-minutes, 4-5 minutes of wall time on two cores.

Usage::

    python scripts/train_demo_models.py                # writes rbln_eval/demo/
    python scripts/train_demo_models.py --out /tmp/demo  # somewhere else
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.optimization import Adafactor  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "rbln_eval" / "demo"
STATIC_TASK_FILES = ("demo.yaml", "demo_cloze.yaml", "demo_mc.yaml", "demo_ppl.yaml", "demo_gen.yaml", "demo_data.py")

# Language-reference topics that make up the corpus, in this order.
TOPICS = (
    "objects", "truth", "booleans", "comparisons", "if", "while", "for", "try",
    "with", "del", "return", "yield", "raise", "break", "continue",
    "import", "global", "nonlocal", "assert", "lambda", "class", "function",
    "naming", "exceptions", "context-managers", "calls", "assignment", "in",
)
ASCII_MAP = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"',
    "\u2013": "-", "\u2014": "--", "\u2026": "...", "\u00b0": " degrees",
})

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]  # ids 0, 1, 2, 3
VOCAB_SIZE = 1536
MAX_LEN = 256
SEED = 1234

N_CLOZE, N_MC, N_GEN, N_PPL = 100, 80, 60, 40
GEN_TARGET_WORDS = 4
MAX_SHORT_TOKENS = 128  # context + continuation budget for cloze / mc / gen


# --------------------------------------------------------------------------- corpus


def extract_paragraphs(text: str) -> list[str]:
    """Return the prose paragraphs of one pydoc topic, each on a single line."""
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.split("\n")
        if any(line.startswith(" ") for line in lines):  # code, grammar, lists
            continue
        if len(lines) >= 2 and re.fullmatch(r"[*=\-~^]+", lines[-1].strip()):  # heading
            continue
        if lines[0].startswith(("* ", "[", "-", "See also", "Changed in", "Added in", "Deprecated")):
            continue
        paragraph = normalize(" ".join(line.strip() for line in lines))
        complete = re.search(r"\.[)\"']?$", paragraph) is not None  # not cut before a code example
        if len(paragraph.split()) >= 12 and paragraph.isascii() and complete:
            paragraphs.append(paragraph)
    return paragraphs


def normalize(text: str) -> str:
    """ASCII punctuation, no reST emphasis or footnote marks, single spaces."""
    text = text.translate(ASCII_MAP)
    text = re.sub(r'(?<![\w"*])\*{1,2}(?=\S)([^*"]+?)(?<=\S)\*{1,2}(?![\w*])', r"\1", text)
    text = re.sub(r"\s*\[\d+\]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def build_corpus() -> list[list[str]]:
    """Documents (one per topic) as lists of paragraphs."""
    from pydoc_data.topics import topics

    docs = [extract_paragraphs(topics[name]) for name in TOPICS]
    return [doc for doc in docs if doc]


def corpus_to_text(docs: Sequence[Sequence[str]]) -> str:
    """Serialize documents: paragraphs on their own line, documents separated by a blank line."""
    return "\n\n".join("\n".join(doc) for doc in docs) + "\n"


def text_to_corpus(text: str) -> list[list[str]]:
    return [block.split("\n") for block in text.strip("\n").split("\n\n")]


def document_text(doc: Sequence[str]) -> str:
    return "\n".join(doc)


# --------------------------------------------------------------------------- tokenizer


def train_tokenizer(docs: Sequence[Sequence[str]]) -> Tokenizer:
    """Byte-level BPE without automatic special tokens (like GPT-2)."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([document_text(doc) for doc in docs], trainer)
    return tok


def with_eos_suffix(tok: Tokenizer) -> Tokenizer:
    """Copy of ``tok`` that appends ``</s>`` to every encoded text, as T5 tokenizers do."""
    out = Tokenizer.from_str(tok.to_str())
    eos = tok.token_to_id(EOS)
    out.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, eos)]
    )
    return out


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    """Save in the transformers layout that AutoTokenizer loads as a fast tokenizer."""
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
        model_max_length=MAX_LEN, clean_up_tokenization_spaces=False,
    )
    wrapped.save_pretrained(out_dir)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    # A class name that both transformers 4.x and 5.x resolve to the generic fast tokenizer.
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg["clean_up_tokenization_spaces"] = False
    cfg["padding_side"] = "right"
    cfg_path.write_text(json.dumps(dict(sorted(cfg.items())), indent=2) + "\n")
    for extra in ("special_tokens_map.json", "chat_template.jinja"):
        (out_dir / extra).unlink(missing_ok=True)


def encode(tok: Tokenizer, text: str) -> list[int]:
    return tok.encode(text).ids


def token_stream(tok: Tokenizer, docs: Sequence[Sequence[str]]) -> torch.Tensor:
    """All documents as one id stream: ``<s> doc </s> <s> doc </s> ...``."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    ids: list[int] = []
    for doc in docs:
        ids += [bos, *encode(tok, document_text(doc)), eos]
    return torch.tensor(ids, dtype=torch.long)


# --------------------------------------------------------------------------- models


def llama_config(tok: Tokenizer) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=MAX_LEN,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS),
        pad_token_id=tok.token_to_id(PAD),
        torch_dtype="float32",
    )


def t5_config(tok: Tokenizer) -> T5Config:
    pad = tok.token_to_id(PAD)
    return T5Config(
        vocab_size=tok.get_vocab_size(),
        d_model=128,
        d_kv=32,
        d_ff=256,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.0,
        feed_forward_proj="relu",
        n_positions=MAX_LEN,
        pad_token_id=pad,
        eos_token_id=tok.token_to_id(EOS),
        bos_token_id=tok.token_to_id(BOS),
        decoder_start_token_id=pad,
        torch_dtype="float32",
    )


@dataclass
class TrainSpec:
    steps: int
    batch_size: int
    lr: float
    warmup: int = 30
    optimizer: str = "adamw"  # or "adafactor"


def lr_at(step: int, spec: TrainSpec) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    progress = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.Optimizer:
    """AdamW, or Adafactor with parameter-relative steps (the usual T5 recipe).

    T5 initializes its embeddings with unit variance, so absolute AdamW steps
    barely move them; Adafactor scales each update by the parameter's RMS.
    """
    if spec.optimizer == "adafactor":
        return Adafactor(model.parameters(), lr=spec.lr, scale_parameter=True, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), weight_decay=0.0)


def run_training(model: torch.nn.Module, spec: TrainSpec, batches: Iterator[dict], name: str) -> float:
    """Plain training loop; returns the mean loss of the last 20 steps."""
    opt = make_optimizer(model, spec)
    model.train()
    losses: list[float] = []
    start = time.time()
    for step in range(spec.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, spec)
        loss = model(**next(batches)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0 or step == spec.steps - 1:
            print(f"[{name}] step {step:4d} loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    model.eval()
    return sum(losses[-20:]) / len(losses[-20:])


def ring(stream: torch.Tensor) -> torch.Tensor:
    """The stream with its head appended, so windows may start anywhere and wrap around.

    Every position is then covered by equally many windows; without wrapping,
    the first and last documents would be seen far less often than the rest.
    """
    return torch.cat([stream, stream[: MAX_LEN + 8]])


def causal_batches(stream: torch.Tensor, batch_size: int, gen: torch.Generator) -> Iterator[dict]:
    """Random full-length windows of the (wrapped) token stream."""
    wrapped = ring(stream)
    while True:
        starts = torch.randint(0, len(stream), (batch_size,), generator=gen)
        ids = torch.stack([wrapped[s : s + MAX_LEN] for s in starts.tolist()])
        yield {"input_ids": ids, "labels": ids}


def seq2seq_batches(
    stream: torch.Tensor, doc_starts: torch.Tensor, eos: int, batch_size: int, gen: torch.Generator
) -> Iterator[dict]:
    """Prefix-LM pairs: the encoder reads a span, the decoder writes what follows.

    * 80%: a short span ending in ``</s>`` (as every text the T5 tokenizer
      encodes), decoder target of 1-6 tokens, 8x batch size. Only the
      cross-attention can predict the first target tokens, and that is what
      cloze and multiple-choice scoring ask for; each pass teaches a seq2seq
      model just a few targets, hence the large, cheap batches.
    * 20%: one-token encoder input (often ``<s>``) and a long decoder target,
      which is what rolling log-likelihood asks of a seq2seq model.
    """

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (), generator=gen))

    wrapped = ring(stream)
    while True:
        rolling = torch.rand((), generator=gen).item() < 0.2
        if rolling:
            n, enc_len, dec_len = batch_size, 1, randint(64, MAX_LEN)
        else:
            n, enc_len, dec_len = 8 * batch_size, randint(8, 32), randint(1, 6)
        starts = torch.randint(0, len(stream), (n,), generator=gen)
        if rolling:
            at_doc = torch.rand((n,), generator=gen) < 0.5
            picks = doc_starts[torch.randint(0, len(doc_starts), (n,), generator=gen)]
            starts = torch.where(at_doc, picks, starts)
        enc = torch.stack([wrapped[s : s + enc_len] for s in starts.tolist()])
        if not rolling:
            enc = torch.cat([enc, torch.full((n, 1), eos)], dim=1)
        dec = torch.stack([wrapped[s + enc_len : s + enc_len + dec_len] for s in starts.tolist()])
        yield {"input_ids": enc, "attention_mask": torch.ones_like(enc), "labels": dec}


def train_llama(tok: Tokenizer, stream: torch.Tensor, spec: TrainSpec) -> LlamaForCausalLM:
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(llama_config(tok))
    gen = torch.Generator().manual_seed(SEED + 1)
    loss = run_training(model, spec, causal_batches(stream, spec.batch_size, gen), "llama")
    print(f"[llama] final train loss {loss:.3f}")
    return model


def train_t5(tok: Tokenizer, stream: torch.Tensor, spec: TrainSpec) -> T5ForConditionalGeneration:
    torch.manual_seed(SEED)
    model = T5ForConditionalGeneration(t5_config(tok))
    gen = torch.Generator().manual_seed(SEED + 2)
    doc_starts = (stream == tok.token_to_id(BOS)).nonzero().flatten()
    batches = seq2seq_batches(stream, doc_starts, tok.token_to_id(EOS), spec.batch_size, gen)
    loss = run_training(model, spec, batches, "t5")
    print(f"[t5] final train loss {loss:.3f}")
    return model


def train_and_save(kind: str, tok_json: str, stream: torch.Tensor, steps: int, out_dir: Path) -> float:
    """Train one model in this process (one thread) and save it; returns seconds taken."""
    setup_determinism()
    tok = Tokenizer.from_str(tok_json)
    start = time.time()
    if kind == "llama":
        model = train_llama(tok, stream, TrainSpec(steps=steps, batch_size=8, lr=3e-3))
        save_model(model, tok, out_dir)
    else:
        model = train_t5(tok, stream, TrainSpec(steps=steps, batch_size=8, lr=3e-2, optimizer="adafactor"))
        save_model(model, with_eos_suffix(tok), out_dir)
    seconds = time.time() - start
    print(f"[{kind}] trained and saved in {seconds:.0f}s", flush=True)
    return seconds


def save_model(model: torch.nn.Module, tok: Tokenizer, out_dir: Path) -> None:
    """Weights (safetensors), config, generation config and tokenizer files."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    cfg = model.config
    model.generation_config = GenerationConfig(
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
        decoder_start_token_id=getattr(cfg, "decoder_start_token_id", None),
        do_sample=False,
        max_length=MAX_LEN,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    save_tokenizer(tok, out_dir)


# --------------------------------------------------------------------------- tasks


SENTENCE_SPLIT = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"(])")


def sentences(paragraph: str) -> list[str]:
    return [s for s in SENTENCE_SPLIT.split(paragraph) if s]


@dataclass(frozen=True)
class Item:
    """A sentence of the corpus with the sentence before it in the same paragraph."""

    prev: str
    words: tuple[str, ...]

    def prefix(self, n_words: int) -> str:
        head = " ".join(self.words[:n_words])
        return f"{self.prev} {head}" if self.prev else head


def eligible_items(docs: Sequence[Sequence[str]]) -> list[Item]:
    """Sentences of 8-40 words ending in a plain word and a full stop."""
    items, seen = [], set()
    for doc in docs:
        for paragraph in doc:
            prev = ""
            for sent in sentences(paragraph):
                words = tuple(sent.split())
                ok = 8 <= len(words) <= 40 and re.fullmatch(r"[A-Za-z]{3,}\.", words[-1])
                if ok and sent not in seen and len(prev.split()) <= 40:
                    items.append(Item(prev, words))
                    seen.add(sent)
                prev = sent
    return items


def cloze_doc(item: Item) -> dict:
    return {"context": item.prefix(len(item.words) - 1), "target": item.words[-1].rstrip(".")}


def mc_doc(item: Item, distractors: Sequence[Item], rng: random.Random) -> dict:
    """Pick the true second half of a sentence among second halves of others."""
    def tail(it: Item) -> str:
        return " ".join(it.words[len(it.words) // 2 :])

    choices = [tail(d) for d in distractors]
    label = rng.randrange(len(choices) + 1)
    choices.insert(label, tail(item))
    return {"context": item.prefix(len(item.words) // 2), "choices": choices, "label": label}


def gen_doc(item: Item) -> dict | None:
    """Prompt with all but the last words; the target is those words without the stop."""
    cut = len(item.words) - GEN_TARGET_WORDS
    target = " ".join(item.words[cut:])[:-1]
    if "." in target or any(c in target for c in "\n\"'"):
        return None
    return {"context": item.prefix(cut), "target": target}


def short_len(tok: Tokenizer, doc: dict) -> int:
    """Tokens of context plus the longest continuation."""
    conts = doc.get("choices") or [doc["target"]]
    return max(len(encode(tok, f"{doc['context']} {c}")) for c in conts)


def build_short_tasks(tok: Tokenizer, docs: Sequence[Sequence[str]], rng: random.Random) -> dict[str, list[dict]]:
    """Cloze, multiple-choice and generation docs from disjoint sentences."""
    items = eligible_items(docs)
    rng.shuffle(items)
    out: dict[str, list[dict]] = {"demo_cloze": [], "demo_mc": [], "demo_gen": []}
    wanted = {"demo_cloze": N_CLOZE, "demo_mc": N_MC, "demo_gen": N_GEN}
    for item in items:
        for name in ("demo_gen", "demo_cloze", "demo_mc"):
            if len(out[name]) >= wanted[name]:
                continue
            if name == "demo_gen":
                doc = gen_doc(item)
            elif name == "demo_cloze":
                doc = cloze_doc(item)
            else:
                others = [x for x in rng.sample(items, 8) if x != item][:3]
                doc = mc_doc(item, others, rng)
            if doc is not None and short_len(tok, doc) <= MAX_SHORT_TOKENS:
                out[name].append(doc)
                break
    for name, n in wanted.items():
        if len(out[name]) != n:
            raise RuntimeError(f"only {len(out[name])} docs for {name}, wanted {n}")
    return out


def build_ppl_task(tok: Tokenizer, docs: Sequence[Sequence[str]], rng: random.Random) -> list[dict]:
    """Runs of whole paragraphs, 60-420 tokens; about a third longer than the context window."""
    runs = []
    for doc in docs:
        for i in range(len(doc)):
            for j in range(i + 1, len(doc) + 1):
                n = len(encode(tok, document_text(doc[i:j])))
                if n > 420:
                    break
                if n >= 60:
                    runs.append((n, document_text(doc[i:j])))
    long = [r for r in runs if r[0] > MAX_LEN]
    short = [r for r in runs if r[0] <= MAX_LEN]
    picked = rng.sample(long, min(len(long), N_PPL // 3))
    picked += rng.sample(short, N_PPL - len(picked))
    rng.shuffle(picked)
    return [{"text": text} for _, text in picked]


def write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_tasks(tok: Tokenizer, docs: Sequence[Sequence[str]], tasks_dir: Path) -> dict[str, list[dict]]:
    tasks_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    data = build_short_tasks(tok, docs, rng)
    data["demo_ppl"] = build_ppl_task(tok, docs, rng)
    for name, rows in data.items():
        write_jsonl(tasks_dir / f"{name}.jsonl", rows)
    src = DEFAULT_OUT / "tasks"
    if tasks_dir.resolve() != src.resolve():
        for fname in STATIC_TASK_FILES:
            shutil.copy2(src / fname, tasks_dir / fname)
    return data


def report_baselines(tok: Tokenizer, data: dict[str, list[dict]]) -> None:
    """Print what a model that ignores the context would score."""
    targets = [d["target"] for d in data["demo_cloze"]]
    top = max(set(targets), key=targets.count)
    print(f"[tasks] cloze: best constant guess {top!r} = {targets.count(top) / len(targets):.1%} acc")
    gen_targets = [d["target"] for d in data["demo_gen"]]
    top = max(set(gen_targets), key=gen_targets.count)
    print(f"[tasks] gen: best constant guess = {gen_targets.count(top) / len(gen_targets):.1%} exact_match")
    lens = [len(encode(tok, d["text"])) for d in data["demo_ppl"]]
    print(f"[tasks] ppl: {len(lens)} passages, {min(lens)}-{max(lens)} tokens, {sum(n > MAX_LEN for n in lens)} > {MAX_LEN}")
    for name in ("demo_cloze", "demo_mc", "demo_gen"):
        print(f"[tasks] {name}: {len(data[name])} docs, max {max(short_len(tok, d) for d in data[name])} tokens")


# --------------------------------------------------------------------------- main


def sha256_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: %(default)s)")
    parser.add_argument("--corpus", type=Path, default=None,
                        help="train on this corpus.txt instead of extracting it from pydoc_data (reproduces the committed models on another Python version)")
    parser.add_argument("--llama-steps", type=int, default=400, help="training steps of the causal LM (default: %(default)s)")
    parser.add_argument("--t5-steps", type=int, default=2000, help="training steps of the seq2seq LM (default: %(default)s)")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                        help="train the two models in parallel processes, one thread each (default: %(default)s)")
    parser.add_argument("--tasks-only", action="store_true", help="write the corpus and task data only; skip model training")
    return parser.parse_args(argv)


def setup_determinism() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    random.seed(SEED)
    torch.manual_seed(SEED)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_determinism()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    docs = text_to_corpus(args.corpus.read_text(encoding="utf-8")) if args.corpus else build_corpus()
    corpus_text = corpus_to_text(docs)
    if not args.corpus or args.corpus.resolve() != (out / "corpus.txt").resolve():
        (out / "corpus.txt").write_text(corpus_text, encoding="utf-8", newline="\n")
    print(f"[corpus] {len(docs)} documents, {sum(map(len, docs))} paragraphs, {len(corpus_text)} chars, "
          f"sha256 {hashlib.sha256(corpus_text.encode()).hexdigest()[:16]}")

    tok = train_tokenizer(docs)
    stream = token_stream(tok, docs)
    print(f"[tokenizer] vocab {tok.get_vocab_size()}, corpus {len(stream)} tokens")
    data = write_tasks(tok, docs, out / "tasks")
    report_baselines(tok, data)
    if args.tasks_only:
        return 0

    jobs = [
        ("llama", args.llama_steps, out / "models" / "llama"),
        ("t5", args.t5_steps, out / "models" / "t5"),
    ]
    start = time.time()
    if args.jobs > 1:  # each job is still single-threaded and seeded, so results do not change
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            futures = [pool.submit(train_and_save, kind, tok.to_str(), stream, steps, path) for kind, steps, path in jobs]
            for future in futures:
                future.result()
    else:
        for kind, steps, path in jobs:
            train_and_save(kind, tok.to_str(), stream, steps, path)
    print(f"[train] wall time {time.time() - start:.0f}s")
    for rel, digest in sha256_tree(out / "models").items():
        size = (out / "models" / rel).stat().st_size
        print(f"  {rel:40s} {size:9d} B  {digest[:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
