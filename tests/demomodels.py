"""Model directories for tests: the embedded demo models, or untrained models of the same shape.

The untrained stand-ins use the demo tokenizer recipe and configs of ``scripts/train_demo_models.py``
(seeded), so tasks, shapes and code paths are the same; only the scores differ.
"""

from __future__ import annotations

import functools
import importlib.util
import sys
from pathlib import Path

from rbln_eval import demo

REPO = Path(__file__).resolve().parent.parent


def _train_script():
    spec = importlib.util.spec_from_file_location("train_demo_models", REPO / "scripts" / "train_demo_models.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def model_dirs(scratch: str) -> dict[str, Path]:
    """``{"causal": dir, "seq2seq": dir}``; built under ``scratch`` when the demo models are not shipped."""
    shipped = {"causal": demo.causal_model_dir(), "seq2seq": demo.seq2seq_model_dir()}
    if all((path / "config.json").is_file() for path in shipped.values()):
        return shipped
    import torch

    script = _train_script()
    docs = script.text_to_corpus((demo.DEMO_DIR / "corpus.txt").read_text(encoding="utf-8"))
    tok = script.train_tokenizer(docs)
    root = Path(scratch)
    torch.manual_seed(script.SEED)
    script.save_model(script.LlamaForCausalLM(script.llama_config(tok)), tok, root / "llama")
    torch.manual_seed(script.SEED)
    t5 = script.T5ForConditionalGeneration(script.t5_config(tok))
    script.save_model(t5, script.with_eos_suffix(tok), root / "t5")
    return {"causal": root / "llama", "seq2seq": root / "t5"}
