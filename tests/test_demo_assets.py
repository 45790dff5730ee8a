"""The embedded demo models, tokenizer and lm_eval task suite load offline and are sane."""

from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from rbln_eval import demo  # noqa: E402

MAX_BYTES = 5 * 1024 * 1024
MODEL_DIRS = {"llama": demo.causal_model_dir(), "t5": demo.seq2seq_model_dir()}
EXPECTED_TASKS = {
    "demo_cloze": ("loglikelihood", 100),
    "demo_mc": ("multiple_choice", 80),
    "demo_ppl": ("loglikelihood_rolling", 40),
    "demo_gen": ("generate_until", 60),
}
SAMPLE_TEXTS = [
    "Every object has an identity, a type and a value.",
    'The "if" statement is used for conditional execution:\n    if x: pass',
    "Unicode survives byte-level BPE: caf\u00e9, \u03bb, \u2014, \U0001f40d.",
    "  leading spaces, trailing spaces  \n\n",
]


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIRS[name], local_files_only=True)


def _corpus_document() -> str:
    """First document (topic) of the training corpus, as the models saw it."""
    return (demo.DEMO_DIR / "corpus.txt").read_text(encoding="utf-8").split("\n\n")[0]


def test_paths_exist() -> None:
    assert demo.DEMO_DIR.is_dir()
    assert demo.tasks_dir().is_dir()
    for path in MODEL_DIRS.values():
        for fname in ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            assert (path / fname).is_file(), path / fname


@pytest.mark.parametrize("name", sorted(MODEL_DIRS))
def test_model_dir_size(name: str) -> None:
    total = sum(p.stat().st_size for p in MODEL_DIRS[name].rglob("*") if p.is_file())
    assert 100_000 < total < MAX_BYTES


@pytest.mark.parametrize("name", sorted(MODEL_DIRS))
def test_tokenizer_special_tokens_and_round_trip(name: str) -> None:
    tok = _tokenizer(name)
    assert tok.is_fast
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.model_max_length == 256
    assert 1000 <= len(tok) <= 2000
    for text in SAMPLE_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert not set(ids) & {0, 1, 2, 3}
        # Causal LM: nothing added (GPT-2 style); T5: "</s>" appended, as T5 tokenizers do.
        suffix = [tok.eos_token_id] if name == "t5" else []
        assert tok.encode(text) == ids + suffix
        assert tok.decode(ids + suffix, skip_special_tokens=True) == text
    # Byte-level BPE merges frequent corpus words into single tokens.
    assert len(tok.encode(" object", add_special_tokens=False)) == 1


def test_both_models_share_one_vocabulary() -> None:
    llama = json.loads((MODEL_DIRS["llama"] / "tokenizer.json").read_text())
    t5 = json.loads((MODEL_DIRS["t5"] / "tokenizer.json").read_text())
    assert llama["model"] == t5["model"]  # same vocabulary and merges
    assert llama["added_tokens"] == t5["added_tokens"]
    assert not (llama["post_processor"] or {}).get("special_tokens")
    assert list(t5["post_processor"]["special_tokens"]) == ["</s>"]


def test_causal_model_config_and_memorization() -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(MODEL_DIRS["llama"], local_files_only=True).eval()
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.max_position_embeddings == 256
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert head_dim >= 16 and head_dim & (head_dim - 1) == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.generation_config.eos_token_id == 2

    tok = _tokenizer("llama")
    ids = torch.tensor([tok.encode(_corpus_document())[:128]])
    assert ids.shape[1] == 128
    shuffled = ids[:, torch.randperm(ids.shape[1], generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        seen = model(input_ids=ids, labels=ids).loss.item()
        noise = model(input_ids=shuffled, labels=shuffled).loss.item()
    assert seen < 1.0, seen  # training text is memorized
    assert noise > seen + 3.0, (seen, noise)


def test_seq2seq_model_config_and_memorization() -> None:
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(MODEL_DIRS["t5"], local_files_only=True).eval()
    cfg = model.config
    assert cfg.model_type == "t5"
    assert cfg.decoder_start_token_id == cfg.pad_token_id == 0
    assert cfg.n_positions == 256
    assert cfg.d_kv >= 16 and cfg.d_kv & (cfg.d_kv - 1) == 0
    assert all(p.dtype == torch.float32 for p in model.parameters())

    tok = _tokenizer("t5")
    ids = tok.encode(_corpus_document(), add_special_tokens=False)
    enc, dec = torch.tensor([ids[:24] + [tok.eos_token_id]]), torch.tensor([ids[24:64]])
    with torch.no_grad():
        seen = model(input_ids=enc, labels=dec).loss.item()
        shuffled = dec[:, torch.randperm(dec.shape[1], generator=torch.Generator().manual_seed(0))]
        noise = model(input_ids=enc, labels=shuffled).loss.item()
    assert seen < 2.0, seen
    assert noise > seen + 2.0, (seen, noise)


@pytest.fixture(scope="module")
def loaded_tasks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from lm_eval.tasks import TaskManager

    # Load from an unrelated working directory: data paths must not depend on it.
    cwd = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        manager = TaskManager(include_path=str(demo.tasks_dir()), include_defaults=False)
        loaded = manager.load([demo.GROUP_NAME])
    finally:
        os.chdir(cwd)
    return loaded


def test_task_suite_loads_with_expected_docs(loaded_tasks: dict) -> None:
    tasks = loaded_tasks["tasks"]
    assert set(tasks) == set(EXPECTED_TASKS)
    assert demo.GROUP_NAME in loaded_tasks["groups"]
    assert set(demo.TASK_NAMES) == set(EXPECTED_TASKS)
    for name, (output_type, n_docs) in EXPECTED_TASKS.items():
        task = tasks[name]
        assert task.OUTPUT_TYPE == output_type
        assert len(list(task.eval_docs)) == n_docs


def test_task_requests_are_well_formed(loaded_tasks: dict) -> None:
    tasks = loaded_tasks["tasks"]
    cloze = tasks["demo_cloze"]
    doc = cloze.eval_docs[0]
    target = cloze.doc_to_target(doc)
    assert target.startswith(" ") and not target.startswith("  ")  # lambada-style leading space
    assert not cloze.doc_to_text(doc).endswith(" ")

    mc = tasks["demo_mc"]
    for doc in mc.eval_docs:
        choices = mc.doc_to_choice(doc)
        assert len(choices) == 4 and len(set(choices)) == 4
        assert 0 <= mc.doc_to_target(doc) < 4

    gen = tasks["demo_gen"]
    assert gen.config.generation_kwargs["until"] == [".", "\n"]
    for doc in gen.eval_docs:
        assert "." not in gen.doc_to_target(doc)

    ppl = tasks["demo_ppl"]
    assert all(ppl.doc_to_target(doc) for doc in ppl.eval_docs)


def test_short_tasks_fit_in_context_and_ppl_rolls() -> None:
    tok = _tokenizer("llama")
    rows = {name: [json.loads(line) for line in (demo.tasks_dir() / f"{name}.jsonl").open()] for name in EXPECTED_TASKS}
    for name in ("demo_cloze", "demo_mc", "demo_gen"):
        for row in rows[name]:
            for cont in row.get("choices") or [row["target"]]:
                assert len(tok.encode(f"{row['context']} {cont}")) <= 128
    ppl_lengths = [len(tok.encode(row["text"])) for row in rows["demo_ppl"]]
    assert max(ppl_lengths) <= 450
    assert sum(n > 256 for n in ppl_lengths) >= 10  # rolling windows actually roll
