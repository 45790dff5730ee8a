"""Tiny text and audio classifiers built locally (seeded), and local dataset tasks over generated data.

A RoBERTa and an XLM-RoBERTa sequence classifier (byte-level BPE / SentencePiece unigram vocabularies trained on
the demo corpus, NLI label names) with tasks of single
sentences (``cls_sentences``) and sentence pairs (``cls_pairs``, MNLI-like), and an AST audio classifier (a small
feature extractor, keyword label names) with a task of WAV clips (``cls_clips``). Each kind also has a task whose
label names no model here has (``cls_text_other``, ``cls_clips_other``); the audio one a task whose last clip is at 8 kHz
(``cls_clips_8k``). Both heads are fitted so the tasks' examples get varied labels with logits far apart.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

from mlmmodels import corpus_sentences, train_bpe
from speechmodels import SAMPLING_RATE, speech_clips, write_wav

TEXT_LABELS = ("entailment", "neutral", "contradiction")
AUDIO_LABELS = ("yes", "no", "up", "down", "left", "right")
VOCAB_SIZE = 1000
MAX_POSITIONS = 64
#: The tokens a sequence holds at the default compiled length (RoBERTa's positions start after the padding id).
MAX_TOKENS = MAX_POSITIONS - 2
NUM_MEL_BINS = 32
FRAMES = 48  # 100 frames a second: clips of 0.3-0.9 s are padded or cut to 0.48 s
#: Examples the heads are fitted on (per task): at least the tasks' examples.
FITTED = 8

TASK_YAML = """dataset_task: {name}
kind: {kind}
dataset_path: json
data_files: {{test: {data}}}
split: test
columns: {columns}
label: label
metrics: [top1, top5, macro_f1, mcc]
"""


# --------------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------------


def sentence_docs(count: int) -> list[dict[str, str]]:
    """``count`` sentences of the demo corpus labelled by :data:`TEXT_LABELS` in turn; the third is three sentences
    long (more tokens than the compiled length holds: it is truncated)."""
    sentences = corpus_sentences()
    docs = []
    for i in range(count):
        text = " ".join(sentences[i : i + 3]) if i == 2 else sentences[i]
        docs.append({"sentence": text, "label": TEXT_LABELS[i % len(TEXT_LABELS)]})
    return docs


def pair_docs(count: int) -> list[dict[str, str]]:
    """``count`` premise / hypothesis pairs (consecutive corpus sentences; the second pair too long for the compiled
    length), labelled by :data:`TEXT_LABELS` in turn, starting at the second."""
    sentences = corpus_sentences()[20:]
    docs = []
    for i in range(count):
        premise = " ".join(sentences[2 * i : 2 * i + 3]) if i == 1 else sentences[2 * i]
        docs.append({"premise": premise, "hypothesis": sentences[2 * i + 1],
                     "label": TEXT_LABELS[(i + 1) % len(TEXT_LABELS)]})
    return docs


def train_unigram(sentences: list[str]) -> Any:
    """A SentencePiece unigram vocabulary (XLM-RoBERTa's) trained on ``sentences``, as its tokenizer."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import XLMRobertaTokenizer

    trainer = SentencePieceUnigramTokenizer()
    trainer.train_from_iterator(
        sentences, vocab_size=VOCAB_SIZE, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>",
    )
    vocab = [(piece, score) for piece, score in json.loads(trainer.to_str())["model"]["vocab"]]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=MAX_TOKENS)


@functools.lru_cache(maxsize=None)
def tiny_text_classifier(root: str, kind: str = "roberta") -> Path:
    """Save a tiny seeded ``roberta`` (byte-level BPE) or ``xlm-roberta`` (SentencePiece unigram) sequence classifier of
    :data:`TEXT_LABELS` with its tokenizer; its path."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification, XLMRobertaConfig, XLMRobertaForSequenceClassification

    out = Path(root) / f"tiny-{kind}-nli"
    if (out / "config.json").is_file():
        return out
    if kind == "roberta":
        tokenizer = train_bpe(corpus_sentences(), out / "vocab")
        config_class, model_class = RobertaConfig, RobertaForSequenceClassification
    elif kind == "xlm-roberta":
        tokenizer = train_unigram(corpus_sentences())
        config_class, model_class = XLMRobertaConfig, XLMRobertaForSequenceClassification
    else:
        raise ValueError(kind)
    config = config_class(
        vocab_size=len(tokenizer), max_position_embeddings=MAX_POSITIONS, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id, type_vocab_size=1,
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        initializer_range=0.5,  # the first token's state then depends on the rest of the text (at 0.02 barely)
        id2label=dict(enumerate(TEXT_LABELS)), label2id={label: i for i, label in enumerate(TEXT_LABELS)},
    )
    torch.manual_seed(0)
    model = model_class(config).eval()
    encoded = [tokenizer(d["sentence"], truncation=True, max_length=MAX_TOKENS, return_tensors="pt") for d in sentence_docs(FITTED)]
    encoded += [tokenizer(d["premise"], d["hypothesis"], truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
                for d in pair_docs(FITTED)]
    fit_head(model, model.classifier.out_proj, [dict(e) for e in encoded], len(TEXT_LABELS))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@functools.lru_cache(maxsize=None)
def text_tasks(root: str, count: int) -> Path:
    """A task directory: ``cls_sentences``, ``cls_pairs`` (``count`` examples each) and ``cls_text_other`` (the
    sentences under sentiment labels)."""
    out = Path(root) / f"text-tasks-{count}"
    out.mkdir(parents=True, exist_ok=True)
    sentences, pairs = sentence_docs(count), pair_docs(count)
    other = [{**doc, "label": ("negative", "positive")[i % 2]} for i, doc in enumerate(sentences)]
    for name, data, columns in (
        ("cls_sentences", sentences, "{text: sentence}"),
        ("cls_pairs", pairs, "{text: premise, text_pair: hypothesis}"),
        ("cls_text_other", other, "{text: sentence}"),
    ):
        write_jsonl(out / f"{name}.jsonl", data)
        yaml = TASK_YAML.format(name=name, kind="text-classification", data=f"{name}.jsonl", columns=columns)
        (out / f"{name}.yaml").write_text(yaml, encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def tiny_audio_classifier(root: str) -> Path:
    """Save a tiny seeded AST classifier of :data:`AUDIO_LABELS` with its feature extractor; its path."""
    import torch
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    out = Path(root) / "tiny-ast-keywords"
    if (out / "config.json").is_file():
        return out
    config = ASTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=16,
        frequency_stride=8, time_stride=8, max_length=FRAMES, num_mel_bins=NUM_MEL_BINS,
        id2label=dict(enumerate(AUDIO_LABELS)), label2id={label: i for i, label in enumerate(AUDIO_LABELS)},
    )
    extractor = ASTFeatureExtractor(num_mel_bins=NUM_MEL_BINS, max_length=FRAMES)
    torch.manual_seed(0)
    model = ASTForAudioClassification(config).eval()
    features = extractor(speech_clips(FITTED), sampling_rate=SAMPLING_RATE, return_tensors="pt")
    fit_head(model, model.classifier.dense, [{"input_values": v[None]} for v in features["input_values"]], len(AUDIO_LABELS))
    model.save_pretrained(out)
    extractor.save_pretrained(out)
    return out


@functools.lru_cache(maxsize=None)
def audio_tasks(root: str, count: int) -> Path:
    """A task directory of ``count`` WAV clips: ``cls_clips`` (labelled by :data:`AUDIO_LABELS` in turn),
    ``cls_clips_other`` (unknown label names) and ``cls_clips_8k`` (its last clip declared at 8 kHz)."""
    out = Path(root) / f"audio-tasks-{count}"
    out.mkdir(parents=True, exist_ok=True)
    rows, other, slow = [], [], []
    for i, clip in enumerate(speech_clips(count)):
        write_wav(out / f"clip{i}.wav", clip)
        write_wav(out / f"clip{i}-8k.wav", clip, rate=8000)
        rows.append({"file": f"clip{i}.wav", "label": AUDIO_LABELS[i % len(AUDIO_LABELS)]})
        other.append({"file": f"clip{i}.wav", "label": f"keyword {i % 3}"})
        slow.append({"file": f"clip{i}-8k.wav" if i == count - 1 else f"clip{i}.wav", "label": AUDIO_LABELS[i % len(AUDIO_LABELS)]})
    for name, data in (("cls_clips", rows), ("cls_clips_other", other), ("cls_clips_8k", slow)):
        write_jsonl(out / f"{name}.jsonl", data)
        yaml = TASK_YAML.format(name=name, kind="audio-classification", data=f"{name}.jsonl", columns="{audio: file}")
        (out / f"{name}.yaml").write_text(yaml, encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------------
# Shared
# --------------------------------------------------------------------------------------------------


def fit_head(model: Any, linear: Any, batches: Sequence[dict[str, Any]], labels: int) -> None:
    """Set ``linear`` (the classifier's last layer) so example i of ``batches`` gets label ⌊5·i / 3⌋ mod ``labels``, with
    logits far apart: an untrained head gives every example the same label."""
    import torch

    features: list[torch.Tensor] = []
    hook = linear.register_forward_hook(lambda module, args, output: features.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for inputs in batches:
            model(**inputs)
        hook.remove()
        count = len(batches)
        inputs = torch.cat([torch.cat(features), torch.ones(count, 1)], dim=1)
        targets = torch.full((count, labels), -4.0)
        targets[torch.arange(count), (5 * torch.arange(count) // 3) % labels] = 4.0
        solution = torch.linalg.lstsq(inputs, targets).solution  # [features + 1, labels]
        linear.weight.copy_(solution[:-1].T)
        linear.bias.copy_(solution[-1])


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
