"""Speech recognition bundles (a tiny Whisper and a tiny Wav2Vec2 CTC model, built locally) on the simulator.

Transcriptions equal transformers' own greedy output (Whisper's ``generate``; a CTC model's argmax over the same
padded clip) clip by clip, at batch 1 and a compiled batch with a ragged last batch; Whisper's log-likelihoods
equal a transformers forward within 1e-4 (relative above 1, as ``compare``'s tolerance); the decoder runs once per generated token (its KV cache, never a
re-prefill); ``wer`` is the corpus word error rate; data-parallel workers give identical results; bad requests
and unanswerable tasks are refused in one line before any device work.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import rbln_eval.sim as sim

try:
    sim.activate()
except sim.SimulatorConflictError:  # a real rebel SDK is installed: these tests need the simulator
    pytest.skip("a real rebel SDK is installed", allow_module_level=True)

from lmhelpers import cli_in_process  # noqa: E402
from remotehelpers import ok, one_line_exit_2, results_file  # noqa: E402
from speechmodels import MAX_AUDIO_SAMPLES, speech_clips, speech_tasks, tiny_wav2vec2, tiny_whisper  # noqa: E402
from rbln_eval.api import CompileOptions, open_lm  # noqa: E402
from rbln_eval.build.workflow import compile_bundle, plan_compile  # noqa: E402
from rbln_eval.errors import ConfigError, MultimodalRequestError  # noqa: E402
from rbln_eval.store import Bundle, Store  # noqa: E402

BATCH = 4
CLIPS = 6  # over 4 rows: a ragged last batch
MAX_GEN = 16
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="module")
def tasks(scratch: Path) -> Path:
    return speech_tasks(str(scratch), CLIPS)


@pytest.fixture(scope="module")
def models(scratch: Path) -> dict[str, Path]:
    return {"whisper": tiny_whisper(str(scratch / "models")), "ctc": tiny_wav2vec2(str(scratch / "models"))}


@pytest.fixture(scope="module")
def bundles(scratch: Path, models: dict[str, Path]) -> dict[tuple[str, int], Bundle]:
    store = Store(scratch / "store")
    built = {}
    for kind, model in models.items():
        for batch in (1, BATCH):
            length = MAX_AUDIO_SAMPLES if kind == "ctc" else None
            built[kind, batch] = compile_bundle(plan_compile(str(model), CompileOptions(batch_size=batch, max_seq_len=length)), store).bundle
    return built


def evaluate(lm: Any, tasks: Path, names: tuple[str, ...]) -> dict[str, Any]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(
        model=lm, tasks=list(names), log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
    )


def ordered(results: dict[str, Any], task: str) -> list[dict[str, Any]]:
    return sorted(results["samples"][task], key=lambda s: s["doc_id"])


def clip_array(sample: dict[str, Any]) -> np.ndarray:
    return np.asarray(sample["arguments"][0][-1]["audio"][0]["array"], dtype=np.float32) if "arguments" in sample else None


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """The clips as the task reads them back (16-bit WAV levels)."""
    return [np.round(c * 32767) / 32767 for c in speech_clips(CLIPS)]


def whisper_reference(model_dir: Path, clips: list[np.ndarray]) -> tuple[list[list[int]], list[str]]:
    """transformers' greedy ``generate`` of every clip: its new tokens (EOS included when reached) and text."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    tokens, texts = [], []
    for clip in clips:
        features = processor.feature_extractor(clip, sampling_rate=16000, return_tensors="pt").input_features
        with torch.no_grad():
            out = model.generate(features, max_new_tokens=MAX_GEN, return_dict_in_generate=True).sequences[0].tolist()
        new = out[2:]  # after the init tokens <|startoftranscript|> <|notimestamps|>
        eos = model.generation_config.eos_token_id
        new = new[: new.index(eos) + 1] if eos in new else new
        tokens.append(new)
        texts.append(processor.tokenizer.decode(new, skip_special_tokens=True))
    return tokens, texts


@pytest.mark.parametrize("batch", [1, BATCH])
def test_whisper_transcribes_as_transformers_and_scores_its_transcripts(
    batch: int, bundles: dict, models: dict, tasks: Path, clips: list[np.ndarray],
) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperTokenizer

    with open_lm(bundles["whisper", batch]) as lm:
        results = evaluate(lm, tasks, ("asr_local", "asr_choice"))
        info = lm.get_model_info()["rbln"]
    expected_tokens, expected_texts = whisper_reference(models["whisper"], clips)
    assert [s["resps"][0][0] for s in ordered(results, "asr_local")] == expected_texts
    assert len(set(expected_texts)) == CLIPS  # the clips are told apart
    if batch == 1:  # one decoder call per token fed: the 2 prompt tokens, then each generated token but the last
        decoder = info["device_counters_by_request_type"]["generate_until"]["decoder"]["calls"]
        assert decoder == sum(2 + len(t) - 1 for t in expected_tokens)
        assert info["device_counters_by_request_type"]["generate_until"]["encoder"]["calls"] == CLIPS
    assert info["audio"]["decoder_prompt"] == [601, 608]
    # loglikelihood: log P(continuation | audio, prompt) from a transformers forward
    tokenizer = WhisperTokenizer.from_pretrained(models["whisper"])
    model = WhisperForConditionalGeneration.from_pretrained(models["whisper"]).eval()
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(models["whisper"])
    for sample, clip in zip(ordered(results, "asr_choice"), clips):
        features = extractor(clip, sampling_rate=16000, return_tensors="pt").input_features
        for (context, continuation, _), response in zip(sample["arguments"], sample["resps"]):
            assert context == ""
            target = tokenizer.encode(continuation, add_special_tokens=False)
            ids = torch.tensor([[601, 608, *target]])
            with torch.no_grad():
                logprobs = torch.log_softmax(model(input_features=features, decoder_input_ids=ids[:, :-1]).logits[0], -1)
            expected = sum(float(logprobs[1 + i, t]) for i, t in enumerate(target))
            greedy = all(int(logprobs[1 + i].argmax()) == t for i, t in enumerate(target))
            # float32 at the magnitude of the tiny model's logits: the project's tolerance, relative above 1
            assert abs(response[0][0] - expected) <= TOLERANCE * max(1.0, abs(expected)), (response, expected)
            assert response[0][1] == greedy
    # one encoder call per clip for the three choices of its question
    assert info["device_counters_by_request_type"]["loglikelihood"]["encoder"]["calls"] <= CLIPS


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """Word edits (Levenshtein over words) and reference words: an independent WER."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, word in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1], len(ref)


def test_wer_is_the_corpus_word_error_rate(bundles: dict, tasks: Path) -> None:
    with open_lm(bundles["whisper", BATCH]) as lm:
        results = evaluate(lm, tasks, ("asr_local",))
    edits = words = 0
    for sample in ordered(results, "asr_local"):
        e, w = word_errors(sample["target"], sample["resps"][0][0])
        edits, words = edits + e, words + w
    assert results["results"]["asr_local"]["wer,none"] == pytest.approx(edits / words, abs=1e-12)
    assert results["higher_is_better"]["asr_local"]["wer"] is False


def ctc_reference(model_dir: Path, clips: list[np.ndarray]) -> list[str]:
    """transformers' CTC argmax over each clip padded to the compiled samples, cut to the clip's own frames."""
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    processor = Wav2Vec2Processor.from_pretrained(model_dir)
    model = Wav2Vec2ForCTC.from_pretrained(model_dir).eval()
    texts = []
    for clip in clips:
        values = processor(clip, sampling_rate=16000, return_tensors="pt").input_values
        padded = torch.nn.functional.pad(values, (0, MAX_AUDIO_SAMPLES - values.shape[1]))
        with torch.no_grad():
            logits = model(padded).logits[0]
        frames = int(model._get_feat_extract_output_lengths(torch.tensor(values.shape[1])))
        texts.append(processor.decode(logits[:frames].argmax(-1)))
    return texts


@pytest.mark.parametrize("batch", [1, BATCH])
def test_ctc_transcribes_as_transformers(batch: int, bundles: dict, models: dict, tasks: Path, clips: list[np.ndarray]) -> None:
    with open_lm(bundles["ctc", batch]) as lm:
        results = evaluate(lm, tasks, ("asr_local",))
        counters = lm.get_model_info()["rbln"]["device_counters"]
    assert [s["resps"][0][0] for s in ordered(results, "asr_local")] == ctc_reference(models["ctc"], clips)
    assert counters == {"encoder": {"calls": -(-CLIPS // batch), "tokens": -(-CLIPS // batch) * batch * MAX_AUDIO_SAMPLES}}


def test_data_parallel_transcribes_identically(bundles: dict, tasks: Path) -> None:
    for kind, names in (("whisper", ("asr_local", "asr_choice")), ("ctc", ("asr_local",))):
        with open_lm(bundles[kind, BATCH]) as lm:
            one = evaluate(lm, tasks, names)
        with open_lm(bundles[kind, BATCH], data_parallel=2) as lm:
            two = evaluate(lm, tasks, names)
            assert lm.get_model_info()["rbln"]["data_parallel"] == 2
        for task in names:
            assert [s["resps"] for s in ordered(one, task)] == [s["resps"] for s in ordered(two, task)]


class Request:
    task_name = "asr_bad"

    def __init__(self, args: tuple) -> None:
        self.args = args


def test_bad_audio_is_refused_before_any_device_work(bundles: dict, clips: list[np.ndarray]) -> None:
    gen = {"until": ["<|endoftext|>"], "max_gen_toks": 4}
    good = {"array": clips[0], "sampling_rate": 16000}
    with open_lm(bundles["whisper", BATCH]) as lm:
        cases = [
            ((("", gen, {"audio": [{"array": clips[0], "sampling_rate": 8000}]}),),
             r"^an audio clip is sampled at 8000 Hz; bundle \w{12} expects 16000 Hz: resample the dataset's audio to 16000 Hz$"),
            ((("", gen, {"audio": [good, good]}),), r"^a speech recognition request takes one audio clip, got 2$"),
            ((("", gen, {"audio": ["/nonexistent/clip.wav"]}),), r"^cannot read the audio file /nonexistent/clip.wav"),
            ((("", gen),), r"^task asr_bad sends text-only requests: rbln-audio scores audio requests \(doc_to_audio\)$"),
        ]
        for args, message in cases:
            with pytest.raises(MultimodalRequestError, match=message):
                lm.generate_until([Request(("", gen, {"audio": [good]})), *map(Request, args)])
        assert lm.device_counters == {}
    with open_lm(bundles["ctc", BATCH]) as lm:
        long_clip = {"array": np.zeros(MAX_AUDIO_SAMPLES + 1, dtype=np.float32), "sampling_rate": 16000}
        with pytest.raises(MultimodalRequestError, match=rf"^an audio clip of 1.00 s \({MAX_AUDIO_SAMPLES + 1} samples\) does not fit"):
            lm.generate_until([Request(("", gen, {"audio": [long_clip]}))])
        with pytest.raises(ConfigError, match=r"^task\(s\) asr_bad ask for loglikelihood requests, which ctc bundles do not answer$"):
            lm.loglikelihood([Request(("", " hello", {"audio": [good]}))])
        assert lm.device_counters == {}


def test_compile_options_that_do_not_apply_are_refused(models: dict) -> None:
    with pytest.raises(ConfigError, match=r"^max_seq_len does not apply to Whisper: its lengths are the model's \(100 encoder frames, 32 decoder tokens\)$"):
        plan_compile(str(models["whisper"]), CompileOptions(max_seq_len=64))


def cli(*args: str) -> subprocess.CompletedProcess:
    """``rbln-eval ARGS`` in this process (on the simulator): its exit status and output."""
    code, out, err = cli_in_process(*args)
    return subprocess.CompletedProcess(["rbln-eval", *args], code, out, err)


def test_run_picks_rbln_audio_and_the_text_models_refuse(scratch: Path, models: dict, tasks: Path, bundles: dict) -> None:
    store, out = scratch / "store", scratch / "cli-out"
    common = ["--store", str(store), "--include_path", str(tasks), "--batch-size", str(BATCH)]
    ran = ok(cli("run", "--model", str(models["whisper"]), "--tasks", "asr_local", "--output_path", str(out), *common))
    saved = results_file(out)
    assert saved["config"]["model"] == "rbln-audio" and saved["config"]["rbln"]["bundle_digest"] == bundles["whisper", BATCH].digest
    assert "wer" in ran.stdout and isinstance(saved["results"]["asr_local"]["wer,none"], float)
    refused = cli("run", "--model", str(models["ctc"]), "--max-seq-len", str(MAX_AUDIO_SAMPLES), "--tasks", "asr_choice", *common)
    one_line_exit_2(refused, "asr_choice")
    assert "rbln generate_until" not in refused.stderr and "rbln loglikelihood" not in refused.stderr
    from rbln_eval.lm import RBLNLM

    with pytest.raises(ConfigError, match=r"is a speech-seq2seq bundle: use the `rbln-audio` model for it$"):
        RBLNLM(artifact=bundles["whisper", BATCH].digest, store=str(store))


def test_compare_against_the_float32_transformers_model(scratch: Path, tasks: Path, bundles: dict) -> None:
    import json

    store = scratch / "store"
    for kind, names in (("whisper", "asr_local,asr_choice"), ("ctc", "asr_local")):
        report_path = scratch / f"compare-{kind}.json"
        digest = bundles[kind, BATCH].digest[:12]
        result = ok(cli(
            "compare", digest, "--store", str(store), "--tasks", names, "--include_path", str(tasks),
            "--tolerance", "1e-4", "--output", str(report_path),
        ))
        report = json.loads(report_path.read_text())
        assert report["passed"] is True and report["reference"]["model"] == {"whisper": "hf-speech", "ctc": "hf-ctc"}[kind]
        assert report["reference"]["device"] == "cpu" and f"vs {report['reference']['model']} " in result.stdout
        by_task = {task["task"]: task for task in report["tasks"]}
        assert by_task["asr_local"]["generation_agreement"] == 1.0
        if kind == "whisper":
            assert by_task["asr_choice"]["argmax_agreement"] == 1.0 and by_task["asr_choice"]["max_abs_logprob_delta"] < 1e-3


def test_a_multilingual_whisper_detects_or_takes_its_language(scratch: Path, models: dict, tasks: Path, clips: list) -> None:
    import json
    import shutil

    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model_dir = scratch / "models" / "tiny-whisper-multilingual"
    if not model_dir.exists():
        shutil.copytree(models["whisper"], model_dir)
        generation = json.loads((model_dir / "generation_config.json").read_text())
        generation.update(is_multilingual=True, lang_to_id={"<|en|>": 602}, task_to_id={"translate": 603, "transcribe": 604})
        (model_dir / "generation_config.json").write_text(json.dumps(generation))
    bundle = compile_bundle(plan_compile(str(model_dir), CompileOptions(batch_size=BATCH)), Store(scratch / "store")).bundle
    processor = WhisperProcessor.from_pretrained(model_dir)
    reference = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    features = processor.feature_extractor(clips, sampling_rate=16000, return_tensors="pt").input_features
    for language, prompt in ((None, [601, 602, 608]), ("en", [601, 602, 604, 608])):
        with open_lm(bundle, **({"language": language} if language else {})) as lm:
            results = evaluate(lm, tasks, ("asr_local",))
            assert lm.get_model_info()["rbln"]["audio"]["decoder_prompt"] == ([601, -1, 608] if language is None else prompt)
        with torch.no_grad():
            out = reference.generate(features, max_new_tokens=MAX_GEN, language=language, return_dict_in_generate=True).sequences
        assert out[:, : len(prompt)].tolist() == [prompt] * CLIPS  # transformers' own init tokens, detection included
        expected = processor.batch_decode(out, skip_special_tokens=True)
        assert [s["resps"][0][0] for s in ordered(results, "asr_local")] == expected
    with pytest.raises(ConfigError, match=r"^language 'fr' is not one of the model's languages \(en\)$"):
        open_lm(bundle, language="fr")
