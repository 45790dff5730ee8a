"""Tiny speech recognition models built locally (seeded): no weights, tokenizers or audio from a hub.

A Whisper (log-mel encoder-decoder, byte-level BPE tokenizer trained on the demo corpus, Whisper's special
tokens, an English-only generation config) and a Wav2Vec2 CTC model (character vocabulary), each saved with
its processor; synthetic clips (sums of sines and a little noise) written as WAV files; and local lm_eval
tasks over them: ``asr_local`` (``generate_until``, metric ``wer``) and ``asr_choice`` (``multiple_choice``).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mlmmodels import corpus_sentences

if TYPE_CHECKING:
    from transformers import GenerationConfig, WhisperTokenizer

SAMPLING_RATE = 16000
HOP_LENGTH = 160
CHUNK_SECONDS = 1  # Whisper's window: 1 s = 100 log-mel frames = 2 * max_source_positions
MAX_SOURCE_POSITIONS = CHUNK_SECONDS * SAMPLING_RATE // HOP_LENGTH // 2
MAX_TARGET_POSITIONS = 32
MAX_AUDIO_SAMPLES = CHUNK_SECONDS * SAMPLING_RATE  # the CTC model's compiled input length
BPE_VOCAB_SIZE = 600
#: In Whisper's order, after the BPE vocabulary: ids BPE_VOCAB_SIZE, BPE_VOCAB_SIZE + 1, ...
WHISPER_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
    "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>",
)
#: Ordinary tokens Whisper's generation config suppresses (its first three: '"', '#', '(').
SUPPRESSED_SYMBOLS = ('"', "#", "(")
CTC_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", "|")  # <pad> (id 0) is the CTC blank
CTC_CHARACTERS = "'abcdefghijklmnopqrstuvwxyz"

# How the random Whisper is shaped into a transcriber-like one (see tiny_whisper).
CONV_GAIN = 16.0
CROSS_ATTENTION_GAIN = 8.0
LOGIT_GAIN = 8.0
EOS_RAMP = 0.3
EOS_RAMP_START = 4
BLANK_BIAS = 3.0  # the CTC blank wins about 85 % of the frames


def _train_whisper_tokenizer(directory: Path) -> "WhisperTokenizer":
    from tokenizers import ByteLevelBPETokenizer
    from transformers import WhisperTokenizer

    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(corpus_sentences(), vocab_size=BPE_VOCAB_SIZE, min_frequency=1, special_tokens=[])
    directory.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(directory))
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()
    merges = [tuple(line.split()) for line in lines[1:] if line]  # after the "#version" line
    tokenizer = WhisperTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_TARGET_POSITIONS)
    tokenizer.add_special_tokens({"additional_special_tokens": list(WHISPER_SPECIAL_TOKENS[1:])})
    tokenizer.set_prefix_tokens()  # <|startoftranscript|> <|notimestamps|> text <|endoftext|>
    return tokenizer


def whisper_generation_config(tokenizer) -> "GenerationConfig":
    """English-only generation config (no ``lang_to_id``: no language detection): greedy, short-form."""
    from transformers import GenerationConfig, WhisperTokenizer

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in WHISPER_SPECIAL_TOKENS}
    eos = ids["<|endoftext|>"]
    ordinary = [tokenizer.convert_tokens_to_ids(symbol) for symbol in SUPPRESSED_SYMBOLS]
    # like Whisper's: special tokens last, <|startofprev|> second to last (read when conditioning on previous text)
    specials = [ids[token] for token in WHISPER_SPECIAL_TOKENS[1:-1]]
    return GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=False, max_length=MAX_TARGET_POSITIONS,
        suppress_tokens=sorted(ordinary) + specials,
        begin_suppress_tokens=[tokenizer.convert_tokens_to_ids("\u0120"), eos],  # " " and <|endoftext|>, as Whisper's
    )


@functools.lru_cache(maxsize=None)
def tiny_whisper(root: str) -> Path:
    """Save a tiny seeded Whisper with its ``WhisperProcessor`` and generation config under ``root``; its path.

    1 s windows (100 frames of 80 log-mel bins), 2 + 2 layers of width 32, 32 decoder positions, untied output
    projection. Its random weights are reshaped so greedy transcripts depend on the audio and end on their own:
    larger encoder convolutions (the audio, not the sinusoidal positions, dominates the encoder's output) and
    cross-attention; logits scaled by ``LOGIT_GAIN``; byte tokens that decode to no printable text get zero
    output rows (never the argmax); and the decoder's position embeddings ramp along one direction that is the
    ``<|endoftext|>`` row, so its logit grows with the position and transcripts stop after a few tokens.
    """
    import torch
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperProcessor

    out = Path(root) / "tiny-whisper"
    if (out / "config.json").is_file():
        return out
    tokenizer = _train_whisper_tokenizer(out / "vocab")
    generation_config = whisper_generation_config(tokenizer)
    eos = generation_config.eos_token_id
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_source_positions=MAX_SOURCE_POSITIONS, max_target_positions=MAX_TARGET_POSITIONS,
        decoder_start_token_id=generation_config.decoder_start_token_id, bos_token_id=eos, eos_token_id=eos,
        pad_token_id=eos, tie_word_embeddings=False, suppress_tokens=None, begin_suppress_tokens=None,
    )
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():
        encoder, decoder = model.model.encoder, model.model.decoder
        encoder.conv1.weight.mul_(CONV_GAIN)
        encoder.conv2.weight.mul_(CONV_GAIN)
        for layer in decoder.layers:
            attention = layer.encoder_attn
            for projection in (attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj):
                projection.weight.mul_(CROSS_ATTENTION_GAIN)
        head = model.proj_out.weight
        head.mul_(LOGIT_GAIN)
        for token_id in range(BPE_VOCAB_SIZE):
            text = tokenizer.decode([token_id])
            if "\ufffd" in text or not text.isprintable():
                head[token_id] = 0.0
        direction = torch.randn(config.d_model, generator=torch.Generator().manual_seed(1))
        direction /= direction.norm()
        steps = torch.arange(MAX_TARGET_POSITIONS, dtype=torch.float32) - EOS_RAMP_START
        decoder.embed_positions.weight.add_(EOS_RAMP * steps[:, None] * direction)
        head[eos] = LOGIT_GAIN * direction
    model.generation_config = generation_config
    model.save_pretrained(out)
    features = WhisperFeatureExtractor(
        feature_size=config.num_mel_bins, sampling_rate=SAMPLING_RATE, hop_length=HOP_LENGTH,
        chunk_length=CHUNK_SECONDS, n_fft=400,
    )
    WhisperProcessor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    return out


@functools.lru_cache(maxsize=None)
def tiny_wav2vec2(root: str) -> Path:
    """Save a tiny seeded ``Wav2Vec2ForCTC`` with its ``Wav2Vec2Processor`` (character vocabulary) under ``root``.

    Two conv layers (kernels 10, 3; strides 5, 2: 10 samples a frame), 2 layers of width 32; the tokenizer's
    ``model_max_length`` is ``MAX_AUDIO_SAMPLES`` (optimum-rbln's default ``max_seq_len``). Logits are scaled
    by ``LOGIT_GAIN``, the blank's raised by ``BLANK_BIAS``; ``<s>``, ``</s>``, ``<unk>`` never win. The
    tokenizer's ``do_lower_case`` stays off: in transformers it upper-cases the input (for upper-case
    vocabularies); this vocabulary is lower-case.
    """
    import torch
    from transformers import (
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
        Wav2Vec2Processor,
    )

    out = Path(root) / "tiny-wav2vec2"
    if (out / "config.json").is_file():
        return out
    vocab = {token: index for index, token in enumerate([*CTC_SPECIAL_TOKENS, *CTC_CHARACTERS])}
    vocab_dir = out / "vocab"
    vocab_dir.mkdir(parents=True, exist_ok=True)
    (vocab_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(
        str(vocab_dir / "vocab.json"), bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        word_delimiter_token="|", model_max_length=MAX_AUDIO_SAMPLES,
    )
    features = Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=SAMPLING_RATE, padding_value=0.0, do_normalize=True, return_attention_mask=False,
    )
    config = Wav2Vec2Config(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(32, 32), conv_kernel=(10, 3), conv_stride=(5, 2), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="group", do_stable_layer_norm=False,
        pad_token_id=vocab["<pad>"], bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
    )
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():  # larger logits than the initialisation's: argmaxes change from frame to frame
        head = model.lm_head
        head.weight.mul_(LOGIT_GAIN)
        head.bias[vocab["<pad>"]] += BLANK_BIAS
        for token in ("<s>", "</s>", "<unk>"):  # never predicted
            head.weight[vocab[token]] = 0.0
            head.bias[vocab[token]] = -10.0
    model.save_pretrained(out)
    Wav2Vec2Processor(feature_extractor=features, tokenizer=tokenizer).save_pretrained(out)
    return out


def write_wav(path: Path | str, samples: np.ndarray, rate: int = SAMPLING_RATE) -> Path:
    """Write mono float ``samples`` (in [-1, 1]) as a 16-bit PCM WAV file; its path.

    Samples on the 16-bit grid (multiples of 1 / 32768, as :func:`speech_clips` makes them) read back bit for bit
    with ``soundfile.read(path, dtype="float32")``; the file's bytes depend on the samples only.
    """
    import soundfile

    levels = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype(np.int16)
    soundfile.write(str(path), levels, rate, subtype="PCM_16")
    return Path(path)


def speech_clips(
    count: int, seconds_range: tuple[float, float] = (0.3, 0.9), rate: int = SAMPLING_RATE
) -> list[np.ndarray]:
    """``count`` deterministic float32 clips: three sines under a fade in and out, plus a little seeded noise,
    rounded to 16-bit levels (what :func:`write_wav` stores).

    Lengths spread over ``seconds_range`` (golden-ratio steps: all different), frequencies 150-3000 Hz.
    """
    low, high = seconds_range
    clips = []
    for index in range(count):
        rng = np.random.default_rng(1000 + index)
        length = int(rate * (low + (high - low) * ((0.5 + index * 0.618034) % 1.0)))
        time = np.arange(length) / rate
        amplitudes, frequencies, phases = rng.uniform(0.1, 0.3, 3), rng.uniform(150, 3000, 3), rng.uniform(0, np.pi, 3)
        tones = sum(a * np.sin(2 * np.pi * f * time + p) for a, f, p in zip(amplitudes, frequencies, phases))
        fade = np.minimum(1.0, np.minimum(time, time[-1] - time) / 0.05)
        samples = tones * fade + 0.01 * rng.standard_normal(length)
        clips.append((np.round(samples * 32768.0) / 32768.0).astype(np.float32))  # on the 16-bit grid of a WAV file
    return clips


def asr_docs(count: int) -> list[dict]:
    """``count`` documents: a WAV file name, a short corpus sentence as transcript, and three candidate
    transcripts (the right one at ``label`` = index % 3, then the next two documents' transcripts)."""
    sentences = [s for s in corpus_sentences() if len(s.split()) <= 8][:count]
    if len(sentences) < max(count, 3):
        raise ValueError(f"the corpus has too few short sentences for {count} documents")
    docs = []
    for index, transcript in enumerate(sentences):
        others = [sentences[(index + step) % len(sentences)] for step in (1, 2)]
        label = index % 3
        docs.append({
            "path": f"clip-{index}.wav", "transcript": transcript,
            "choices": others[:label] + [transcript] + others[label:], "label": label,
        })
    return docs


#: The task directory's loader (``custom_dataset``) and ``doc_to_audio``: rows from the JSONL files, each with
#: its WAV file read into ``audio`` (``{"array", "sampling_rate"}``, as a Hub audio dataset gives them).
SPEECH_DATA = '''"""Load the speech tasks' JSONL files and WAV clips from this directory."""

import json
from pathlib import Path

import datasets
import numpy as np
import soundfile

HERE = Path(__file__).resolve().parent


def read_audio(name):
    samples, rate = soundfile.read(str(HERE / name), dtype="float32")
    return {"array": samples, "sampling_rate": rate}


def load_local(data_files, **_metadata):
    splits = {}
    for split, name in data_files.items():
        with (HERE / name).open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        splits[split] = datasets.Dataset.from_list([{**row, "audio": read_audio(row["path"])} for row in rows])
    return datasets.DatasetDict(splits)


def doc_to_audio(doc):
    """One clip per document, as lm_eval's common_voice task gives it (arrays may come back as lists)."""
    audio = doc["audio"]
    return [{"array": np.asarray(audio["array"], dtype=np.float32), "sampling_rate": int(audio["sampling_rate"])}]
'''

TASK_YAML = {
    "asr_local": """task: asr_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: asr.jsonl
custom_dataset: !function speech_data.load_local
output_type: generate_until
test_split: test
doc_to_audio: !function speech_data.doc_to_audio
doc_to_text: ""
doc_to_target: "{{transcript}}"
generation_kwargs:
  until:
    - "<|endoftext|>"
  do_sample: false
  max_gen_toks: 16
metric_list:
  - metric: wer
    higher_is_better: false
metadata:
  version: 1.0
""",
    "asr_choice": """task: asr_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: asr.jsonl
custom_dataset: !function speech_data.load_local
output_type: multiple_choice
test_split: test
doc_to_audio: !function speech_data.doc_to_audio
doc_to_text: ""
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
}


@functools.lru_cache(maxsize=None)
def speech_tasks(root: str, clips: int = 6) -> Path:
    """A task directory with ``asr_local`` and ``asr_choice`` over ``clips`` WAV clips (:func:`speech_clips`).

    Both prompts are empty (``doc_to_text: ""``): a request's context is ``""``, its audio in the third argument.
    ``asr_local`` names the metric ``wer``, which lm_eval knows only once the speech family registered it.
    """
    out = Path(root) / f"speech-tasks-{clips}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "speech_data.py").write_text(SPEECH_DATA, encoding="utf-8")
    for task, text in TASK_YAML.items():
        (out / f"{task}.yaml").write_text(text, encoding="utf-8")
    docs = asr_docs(clips)
    for doc, samples in zip(docs, speech_clips(clips)):
        write_wav(out / doc["path"], samples)
    (out / "asr.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    return out
