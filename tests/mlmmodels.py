"""Tiny masked LMs built locally (seeded): no weights or tokenizers from a hub.

A BERT with a WordPiece tokenizer and a RoBERTa with a byte-level BPE tokenizer, both trained on the demo
corpus, and local lm_eval tasks: ``mlm_cola`` (lm_eval's ``cola`` prompt, choices and ``mcc`` metric over
local sentences), ``mlm_ppl`` (rolling log-likelihood of passages) and ``mlm_gen`` (a ``generate_until`` task).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from rbln_eval import demo
from taskhelpers import JSONL_LOADER

VOCAB_SIZE = 1000
MAX_POSITIONS = 64

COLA_YAML = """task: mlm_cola
dataset_path: json
dataset_kwargs:
  data_files:
    validation: cola.jsonl
custom_dataset: !function mlm_data.load_local
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{sentence}}\\nQuestion: Does this sentence make sense?\\nAnswer:"
doc_to_target: label
doc_to_choice: ["no", "yes"]
metric_list:
  - metric: mcc
metadata:
  version: 1.0
"""

PPL_YAML = """task: mlm_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: ppl.jsonl
custom_dataset: !function mlm_data.load_local
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
metadata:
  version: 1.0
"""

GEN_YAML = """task: mlm_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: ppl.jsonl
custom_dataset: !function mlm_data.load_local
output_type: generate_until
test_split: test
doc_to_text: "{{text}}"
doc_to_target: "{{text}}"
generation_kwargs:
  until: ["."]
  do_sample: false
metric_list:
  - metric: exact_match
metadata:
  version: 1.0
"""

DATA_PY = JSONL_LOADER


def corpus_sentences() -> list[str]:
    """Sentences of the demo corpus."""
    text = (demo.DEMO_DIR / "corpus.txt").read_text(encoding="utf-8")
    sentences = [s.strip() + "." for s in text.replace("\n", " ").split(". ") if len(s.split()) >= 4]
    return sentences


def train_wordpiece(sentences: list[str], directory: Path):
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(sentences, vocab_size=VOCAB_SIZE, min_frequency=1)
    directory.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(directory))
    return BertTokenizer(vocab=str(directory / "vocab.txt"), do_lower_case=True, model_max_length=MAX_POSITIONS)


def train_bpe(sentences: list[str], directory: Path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(
        sentences, vocab_size=VOCAB_SIZE, min_frequency=1, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    directory.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(directory))
    return RobertaTokenizer(
        vocab=str(directory / "vocab.json"), merges=str(directory / "merges.txt"), model_max_length=MAX_POSITIONS - 2,
    )


@functools.lru_cache(maxsize=None)
def tiny_masked_lm(root: str, kind: str) -> Path:
    """Save a tiny seeded ``bert`` or ``roberta`` masked LM with its tokenizer under ``root``; its path."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

    out = Path(root) / f"tiny-{kind}"
    if (out / "config.json").is_file():
        return out
    sentences = corpus_sentences()
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    if kind == "bert":
        tokenizer = train_wordpiece(sentences, out / "vocab")
        config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, pad_token_id=tokenizer.pad_token_id, **shape)
        model_cls = BertForMaskedLM
    elif kind == "roberta":
        tokenizer = train_bpe(sentences, out / "vocab")
        config = RobertaConfig(
            vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, type_vocab_size=1, **shape,
        )
        model_cls = RobertaForMaskedLM
    else:
        raise ValueError(kind)
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():  # larger logits than the initialisation's, so scores and argmaxes are far apart
        model.get_output_embeddings().weight.mul_(8.0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def cola_docs(count: int) -> list[dict]:
    """``count`` cola-style documents: corpus sentences, every other one with its words shuffled (label 0)."""
    import random

    rng = random.Random(0)
    docs = []
    for i, sentence in enumerate(corpus_sentences()[:count]):
        words = sentence.split()[:10]
        if i % 2:
            rng.shuffle(words)
        docs.append({"sentence": " ".join(words), "label": 0 if i % 2 else 1})
    return docs


def ppl_docs(count: int, words: int) -> list[dict]:
    """``count`` passages of about ``words`` words each."""
    sentences = corpus_sentences()
    docs = []
    for i in range(count):
        text = " ".join(" ".join(sentences[i * 3 : i * 3 + 8]).split()[: words + i * 3])
        docs.append({"text": text})
    return docs


@functools.lru_cache(maxsize=None)
def mlm_tasks(root: str, cola: int = 6, ppl: int = 3, ppl_words: int = 14) -> Path:
    """A task directory with ``mlm_cola``, ``mlm_ppl`` and ``mlm_gen``."""
    out = Path(root) / f"mlm-tasks-{cola}-{ppl}-{ppl_words}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "mlm_data.py").write_text(DATA_PY, encoding="utf-8")
    (out / "mlm_cola.yaml").write_text(COLA_YAML, encoding="utf-8")
    (out / "mlm_ppl.yaml").write_text(PPL_YAML, encoding="utf-8")
    (out / "mlm_gen.yaml").write_text(GEN_YAML, encoding="utf-8")
    (out / "cola.jsonl").write_text("".join(json.dumps(d) + "\n" for d in cola_docs(cola)), encoding="utf-8")
    (out / "ppl.jsonl").write_text("".join(json.dumps(d) + "\n" for d in ppl_docs(ppl, ppl_words)), encoding="utf-8")
    return out
