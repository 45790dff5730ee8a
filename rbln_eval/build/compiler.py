"""Compiling a model with optimum-rbln into a bundle directory.

The compiler knows optimum-rbln (``from_pretrained(export=True)``, ``model_save_dir``) and nothing about
the store's layout: it fills the directory it is given. Class auto-detection reads the model's config and
asks the registered families (:mod:`rbln_eval.families.registry`) which one compiles it, through which
optimum-rbln auto class.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import IO, Any, Iterator, Mapping

from rbln_eval.errors import RblnEvalError
from rbln_eval.families.registry import detect_family, families, family_of
from rbln_eval.store.tensors import convert_pickles
from rbln_eval.identity import ModelSource
from rbln_eval.errors import UnsupportedModelError

logger = logging.getLogger(__name__)


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
    family = detect_family(config)
    if family is not None:
        return family.name
    listed = "; ".join(f"{family.name} {', '.join(family.supported_types())}" for family in families())
    raise UnsupportedModelError(
        f"architecture {architectures} (model_type {model_type!r}) is not a model of a family that optimum-rbln "
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
    export_kwargs = dict(load_kwargs)
    model_config = family.export_config(_load_config(source, token, trust_remote_code))
    if model_config is not None:  # the checkpoint's config, completed with what optimum-rbln reads
        export_kwargs["config"] = model_config
    log.write(f"rbln-eval: compiling {source.display} as {model_class} for {npu} with {json.dumps(dict(rbln_config), sort_keys=True)}\n")
    log.flush()
    started = time.monotonic()
    with capture_logs(log):
        model = auto_cls.from_pretrained(
            source.id, export=True, rbln_config=config, model_save_dir=str(directory), **export_kwargs
        )
        if family.has_tokenizer:
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
