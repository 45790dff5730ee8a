"""Compiling a model with optimum-rbln into a bundle directory.

The compiler knows optimum-rbln (``from_pretrained(export=True)``, ``model_save_dir``) and nothing about
the store's layout: it fills the directory it is given. Class auto-detection reads the model's config and
asks each family (:mod:`rbln_eval.families`) whether optimum-rbln compiles it: causal LMs go to
``RBLNAutoModelForCausalLM``, encoder-decoder LMs to ``RBLNAutoModelForSeq2SeqLM``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from .errors import ConfigError, RblnEvalError
from .families import DETECTION_ORDER, FAMILIES, family_of
from .artifacts_tensors import convert_pickles
from .identity import ModelSource

logger = logging.getLogger(__name__)

LOGITS_MODES = ("all", "last")


class UnsupportedModelError(RblnEvalError):
    """The model's architecture has no optimum-rbln causal or seq2seq LM class."""


@dataclass(frozen=True)
class CompileOptions:
    """What a user asks for on ``rbln-eval compile``; :meth:`rbln_config` turns it into optimum-rbln's terms."""

    batch_size: int | None = None
    max_seq_len: int | None = None
    tp: int | None = None
    logits: str = "all"
    dtype: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.logits not in LOGITS_MODES:
            raise ConfigError(f"must be one of {', '.join(LOGITS_MODES)}, got {self.logits!r}", option="logits")
        for name in ("batch_size", "max_seq_len", "tp"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"must be a positive integer, got {value!r}", option=name)

    def rbln_config(self, model_class: str) -> dict[str, Any]:
        """The compile-time rbln_config for ``model_class`` (runtime options excluded)."""
        config: dict[str, Any] = dict(self.extra)
        if self.batch_size is not None:
            config["batch_size"] = self.batch_size
        if self.tp is not None:
            config["num_devices"] = self.tp
        if self.dtype is not None:
            config["dtype"] = self.dtype
        for name, value in family_of(model_class).compile_options(self.max_seq_len, self.logits).items():
            if name == "max_seq_len":
                config[name] = value
            else:
                config.setdefault(name, value)
        return config


def parse_rbln_config(text: str | None) -> dict[str, Any]:
    """``--rbln-config`` value: inline JSON or ``@path/to/file.json``."""
    if not text:
        return {}
    source = text
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            source = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {{rbln_config}} file {path}: {exc.strerror or exc}") from None
    try:
        value = json.loads(source)
    except ValueError as exc:
        raise ConfigError(f"is not valid JSON ({exc})", option="rbln_config") from None
    if not isinstance(value, dict):
        raise ConfigError("must be a JSON object of optimum-rbln compile options", option="rbln_config")
    return value


# --------------------------------------------------------------------------------------------------
# Class detection
# --------------------------------------------------------------------------------------------------


def _load_config(source: ModelSource, token: str | bool | None, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        if source.kind == "local":
            return AutoConfig.from_pretrained(source.id, trust_remote_code=trust_remote_code)
        return AutoConfig.from_pretrained(
            source.id, revision=source.revision, token=token, trust_remote_code=trust_remote_code
        )
    except ValueError as exc:  # unknown model_type, or remote code refused
        raise UnsupportedModelError(f"cannot read the model config of {source.display}: {exc}") from None
    except OSError as exc:
        raise RblnEvalError(f"cannot load the model config of {source.display}: {exc}") from None


def detect_model_class(config: Any) -> str:
    """The model class (a family's name) of a transformers config, or :class:`UnsupportedModelError`."""
    model_type = getattr(config, "model_type", None)
    architectures = ", ".join(getattr(config, "architectures", None) or []) or model_type
    for name in DETECTION_ORDER:
        if FAMILIES[name].matches(config):
            return name
    listed = "; ".join(f"{name} {', '.join(family.supported_types())}" for name, family in FAMILIES.items())
    raise UnsupportedModelError(
        f"architecture {architectures} (model_type {model_type!r}) is not a causal or seq2seq LM that optimum-rbln "
        f"compiles; supported: {listed}"
    )


def inspect_model(source: ModelSource, token: str | bool | None = None, trust_remote_code: bool = False) -> tuple[str, Any]:
    """The model class and config of ``source``."""
    config = _load_config(source, token, trust_remote_code)
    return detect_model_class(config), config


# --------------------------------------------------------------------------------------------------
# Compile
# --------------------------------------------------------------------------------------------------


class _LogToFile(logging.Handler):
    def __init__(self, stream: IO[str]) -> None:
        super().__init__(logging.INFO)
        self.stream = stream
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + "\n")
            self.stream.flush()
        except Exception:  # never let logging break a build
            pass


@contextlib.contextmanager
def capture_logs(stream: IO[str]) -> Iterator[None]:
    """Copy log records and warnings emitted during a build into ``stream`` (the bundle's build log)."""
    handler = _LogToFile(stream)
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for warning in caught:
                stream.write(f"warning: {warning.category.__name__}: {warning.message}\n")
            root.removeHandler(handler)
            root.setLevel(previous_level)


def compile_into(
    directory: Path,
    source: ModelSource,
    model_class: str,
    rbln_config: Mapping[str, Any],
    npu: str,
    log: IO[str],
    token: str | bool | None = None,
    trust_remote_code: bool = False,
) -> None:
    """Compile ``source`` with optimum-rbln and save it into ``directory`` (plus tokenizer + generation config).

    ``npu`` is the device name optimum-rbln compiles for (``RBLN-CA25``), not the ``SIM-`` key target.
    """
    import optimum.rbln as rbln

    family = family_of(model_class)
    auto_cls = getattr(rbln, family.auto_class)
    load_kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source.kind == "hub":
        load_kwargs.update(revision=source.revision, token=token)
    config = {**family.compiler_config(dict(rbln_config)), "npu": npu, "create_runtimes": False}
    log.write(f"rbln-eval: compiling {source.display} as {model_class} for {npu} with {json.dumps(dict(rbln_config), sort_keys=True)}\n")
    log.flush()
    started = time.monotonic()
    with capture_logs(log):
        model = auto_cls.from_pretrained(
            source.id, export=True, rbln_config=config, model_save_dir=str(directory), **load_kwargs
        )
        _save_tokenizer(source, directory, load_kwargs)
        family.save_extras(source.id, directory, load_kwargs, log)
    del model
    for name in convert_pickles(directory):
        log.write(f"rbln-eval: {name} stored as safetensors (no pickles in bundles)\n")
    log.write(f"rbln-eval: compiled in {time.monotonic() - started:.1f}s\n")
    log.flush()


def _save_tokenizer(source: ModelSource, directory: Path, load_kwargs: dict[str, Any]) -> None:
    """Make sure the bundle carries the tokenizer (optimum-rbln saves the preprocessors it finds)."""
    if (directory / "tokenizer_config.json").exists():
        return
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.id, **load_kwargs)
    tokenizer.save_pretrained(directory)
