"""Loading a stored bundle with optimum-rbln (``export=False``) after checking it fits this machine."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

from rbln_eval.errors import RblnEvalError
from rbln_eval.families.registry import family_of
from rbln_eval.identity import toolchain_versions
from rbln_eval.store import Bundle
from rbln_eval.identity.target import installed_npu, is_simulated, npu_of, simulator_active
from rbln_eval.errors import IncompatibleBundleError, RuntimeCreationError

logger = logging.getLogger(__name__)

#: Toolchain packages whose version must match the bundle's exactly: they define the compiled format.
STRICT_TOOLCHAIN = ("rebel-compiler", "optimum-rbln")
#: Files that optimum-rbln would unpickle on load; a bundle holding them is refused.
PICKLE_SUFFIXES = (".pth", ".pt", ".pkl", ".pickle", ".bin")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else "")[:300]


@dataclass
class LoadedBundle:
    bundle: Bundle
    model: Any
    tokenizer: Any
    model_class: str
    load_seconds: float


def check_compatible(bundle: Bundle) -> None:
    """Raise :class:`IncompatibleBundleError` if this machine cannot run ``bundle`` as compiled."""
    key = bundle.key
    simulated = is_simulated(key.target)
    if simulated and not simulator_active():
        raise IncompatibleBundleError(
            f"bundle {bundle.digest[:12]} was compiled for the simulator ({key.target}); "
            "run with RBLN_EVAL_SIMULATE=1, or compile the model for this NPU"
        )
    if not simulated and simulator_active():
        raise IncompatibleBundleError(
            f"bundle {bundle.digest[:12]} targets a real {key.target}; unset RBLN_EVAL_SIMULATE to run it on the NPU"
        )
    npu = installed_npu()
    wanted = npu_of(key.target)
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
    pickles += sorted(  # also files dropped into the directory after publishing: optimum-rbln would read them
        path.relative_to(bundle.path).as_posix() for path in bundle.path.rglob("*")
        if path.name.endswith(PICKLE_SUFFIXES) and path.relative_to(bundle.path).as_posix() not in bundle.manifest.files
    )
    if pickles:
        raise IncompatibleBundleError(
            f"bundle {bundle.digest[:12]} contains pickled files ({', '.join(pickles)}); "
            "rbln-eval does not load pickles from bundles"
        )


def load_tokenizer(bundle: Bundle) -> Any:
    """The tokenizer saved in the bundle (None for a family that reads no text, such as an image classifier)."""
    from transformers import AutoTokenizer

    if not family_of(bundle.key.model_class).has_tokenizer:
        return None
    return AutoTokenizer.from_pretrained(str(bundle.path))


def load_bundle(bundle: Bundle, device: int | Sequence[int] | None = None) -> LoadedBundle:
    """Load ``bundle`` with runtimes on ``device`` (NPU indices; default: the compiled device placement)."""
    check_compatible(bundle)
    import optimum.rbln as rbln

    model_class = bundle.key.model_class
    auto_cls = getattr(rbln, family_of(model_class).auto_class)
    kwargs: dict[str, Any] = {}
    if device is not None:
        devices = [device] if isinstance(device, int) else list(device)
        kwargs["rbln_device"] = devices[0] if len(devices) == 1 else devices
    started = time.monotonic()
    from rbln_eval.store.tensors import prepare_load_dir

    path = prepare_load_dir(bundle)  # the bundle, or a local view with optimum-rbln's artifacts rebuilt
    try:
        model = auto_cls.from_pretrained(str(path), export=False, **kwargs)
    except RblnEvalError:
        raise
    except Exception as exc:
        from rbln_eval.execution.devices import format_devices

        where = "the default NPU" if device is None else format_devices([device] if isinstance(device, int) else list(device))
        raise RuntimeCreationError(
            f"cannot create the runtimes of bundle {bundle.digest[:12]} on {where}: {type(exc).__name__}: {_first_line(exc)}",
            "check the NPUs with `rbln-smi` (or `rbln-eval doctor`)",
        ) from exc
    tokenizer = load_tokenizer(bundle)
    return LoadedBundle(bundle, model, tokenizer, model_class, time.monotonic() - started)
