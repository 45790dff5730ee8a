"""Loading a stored bundle with optimum-rbln (``export=False``) after checking it fits this machine."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from .compiler import AUTO_CLASSES
from .errors import RblnEvalError
from .identity import simulator_active, toolchain_versions
from .store import Bundle

logger = logging.getLogger(__name__)

#: Toolchain packages whose version must match the bundle's exactly: they define the compiled format.
STRICT_TOOLCHAIN = ("rebel-compiler", "optimum-rbln")
#: Files that optimum-rbln would unpickle on load; a bundle holding them is refused.
PICKLE_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle", ".bin")


class IncompatibleBundleError(RblnEvalError):
    """The bundle was compiled for another target or toolchain than this machine has."""


@dataclass
class LoadedBundle:
    bundle: Bundle
    model: Any
    tokenizer: Any
    model_class: str
    load_seconds: float


def current_npu_name() -> str | None:
    try:
        import rebel  # type: ignore[import-not-found]

        return str(rebel.get_npu_name())
    except Exception:
        return None


def check_compatible(bundle: Bundle) -> None:
    """Raise :class:`IncompatibleBundleError` if this machine cannot run ``bundle`` as compiled."""
    key = bundle.key
    simulated = key.target.startswith("SIM-")
    if simulated and not simulator_active():
        raise IncompatibleBundleError(
            f"bundle {bundle.digest[:12]} was compiled for the simulator ({key.target}); "
            "run with RBLN_EVAL_SIMULATE=1, or compile the model for this NPU"
        )
    if not simulated and simulator_active():
        raise IncompatibleBundleError(
            f"bundle {bundle.digest[:12]} targets a real {key.target}; unset RBLN_EVAL_SIMULATE to run it on the NPU"
        )
    npu = current_npu_name()
    wanted = key.target.removeprefix("SIM-")
    if npu is None:
        raise IncompatibleBundleError(f"bundle {bundle.digest[:12]} needs a {wanted} NPU, and none was found")
    if npu != wanted:
        raise IncompatibleBundleError(
            f"bundle {bundle.digest[:12]} was compiled for {wanted}, this device is {npu}: compile it for {npu}"
        )
    installed = toolchain_versions()
    for package in STRICT_TOOLCHAIN:
        if key.toolchain.get(package) != installed.get(package):
            raise IncompatibleBundleError(
                f"bundle {bundle.digest[:12]} was compiled with {package} {key.toolchain.get(package)}, "
                f"installed is {installed.get(package)}: recompile it (rbln-eval compile) or install that version"
            )
    for package in sorted(set(installed) - set(STRICT_TOOLCHAIN)):
        if key.toolchain.get(package) != installed.get(package):
            logger.warning(
                "bundle %s was compiled with %s %s, installed is %s",
                bundle.digest[:12], package, key.toolchain.get(package), installed.get(package),
            )
    pickles = [name for name in bundle.manifest.files if name.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise IncompatibleBundleError(
            f"bundle {bundle.digest[:12]} contains pickled files ({', '.join(pickles)}); "
            "rbln-eval does not load pickles from bundles"
        )


def load_bundle(bundle: Bundle, device: int | list[int] | None = None) -> LoadedBundle:
    """Load ``bundle`` with runtimes on ``device`` (default: the compiled device placement)."""
    check_compatible(bundle)
    import optimum.rbln as rbln
    from transformers import AutoTokenizer

    model_class = bundle.key.model_class
    auto_cls = getattr(rbln, AUTO_CLASSES[model_class])
    kwargs: dict[str, Any] = {}
    if device is not None:
        kwargs["rbln_device"] = device
    started = time.monotonic()
    model = auto_cls.from_pretrained(str(bundle.path), export=False, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(str(bundle.path))
    return LoadedBundle(bundle, model, tokenizer, model_class, time.monotonic() - started)
