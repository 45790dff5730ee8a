"""Faults of the network and the HF caches at our boundaries, as one-line :class:`RblnEvalError`s.

huggingface_hub, datasets, httpx and requests raise their own exceptions (and datasets retries an
unreachable Hub for about a minute). Here they become messages that say what failed and which setting
helps (``HF_HUB_OFFLINE``, ``HF_DATASETS_OFFLINE``, ``rbln-eval prefetch``). :func:`require_hub` probes the
endpoint once, with a short timeout, before anything that would start a retry loop.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from typing import Iterator

from rbln_eval.errors import RblnEvalError
from rbln_eval.errors import HubUnreachableError, NotCachedError

PROBE_TIMEOUT = 3.0
_probed: dict[str, str | None] = {}


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def datasets_offline() -> bool:
    """Whether datasets runs offline (``HF_DATASETS_OFFLINE``, else ``HF_HUB_OFFLINE``)."""
    value = os.environ.get("HF_DATASETS_OFFLINE")
    if value is None:
        return hub_offline()
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    low = text.lower()
    if "connection refused" in low:
        return "connection refused"
    if isinstance(exc, socket.gaierror) or "name or service not known" in low or "nodename nor servname" in low:
        return "host name not found"
    if "timed out" in low or "timeout" in type(exc).__name__.lower():
        return "timed out"
    if "network is unreachable" in low:
        return "network unreachable"
    return text[:120] or type(exc).__name__


def network_reason(exc: BaseException) -> str | None:
    """A short reason (``connection refused``, ``timed out``…) if ``exc`` (or its cause) is a network fault."""
    import httpx

    kinds: tuple[type[BaseException], ...] = (httpx.TransportError, ConnectionError, TimeoutError, socket.gaierror)
    try:
        import requests

        kinds += (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    except ImportError:  # pragma: no cover - requests comes with datasets
        pass
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, kinds):
            return _describe(current)
        current = current.__cause__ or current.__context__
    return None


def probe_hub(timeout: float = PROBE_TIMEOUT) -> str | None:
    """``None`` when ``HF_ENDPOINT`` answers (any HTTP status), else why not; probed once per process."""
    url = endpoint()
    if url in _probed:
        return _probed[url]
    from huggingface_hub.utils import get_session

    reason: str | None = None
    try:
        get_session().head(url, timeout=timeout, follow_redirects=False)
    except Exception as exc:  # noqa: BLE001 - any failure to get an answer means unreachable
        reason = network_reason(exc) or _describe(exc)
    _probed[url] = reason
    return reason


def offline_hint(datasets: bool) -> str:
    names = "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1" if datasets else "HF_HUB_OFFLINE=1"
    return (
        f"connect this machine, or set {names} to use the HF cache "
        "(fill it with `rbln-eval prefetch` on a connected machine and copy it over)"
    )


def require_hub(what: str, datasets: bool = False) -> None:
    """Raise :class:`HubUnreachableError` at once if the Hub is needed for ``what`` and does not answer."""
    reason = probe_hub()
    if reason is not None:
        raise HubUnreachableError(f"cannot reach the Hub at {endpoint()} ({reason}) to {what}: {offline_hint(datasets)}")


@contextmanager
def dataset_errors(what: str, dataset: str | None) -> Iterator[None]:
    """Turn a dataset that cannot be loaded (network, offline cache miss, missing repo) into one line."""
    try:
        yield
    except RblnEvalError:
        raise
    except Exception as exc:
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        name = f" {dataset}" if dataset else ""
        reason = network_reason(exc)
        text = " ".join(str(exc).split())
        if isinstance(exc, (RepositoryNotFoundError,)) or "doesn't exist on the hub" in text.lower():
            raise RblnEvalError(
                f"dataset{name} of task(s) {what} does not exist on {endpoint()} (or is private): "
                "check the task's dataset_path, or set HF_TOKEN"
            ) from None
        if isinstance(exc, RevisionNotFoundError):
            raise RblnEvalError(f"dataset{name} of task(s) {what}: revision not found on {endpoint()}") from None
        if datasets_offline():
            raise NotCachedError(
                f"dataset{name} of task(s) {what} is not in the HF cache and HF_DATASETS_OFFLINE/HF_HUB_OFFLINE is set: "
                f"run `rbln-eval prefetch --tasks {what}` on a connected machine and copy the HF cache"
            ) from None
        if reason is not None:
            raise HubUnreachableError(
                f"cannot reach the Hub at {endpoint()} ({reason}) to load dataset{name} of task(s) {what}: {offline_hint(True)}"
            ) from None
        if isinstance(exc, (FileNotFoundError, ValueError, OSError)):
            raise RblnEvalError(f"cannot load dataset{name} of task(s) {what}: {text[:300]}") from None
        raise


def needs_hub(path: str) -> bool:
    """Whether ``datasets.load_dataset(path)`` reads the Hub: not a local path, not a packaged builder."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    return not (os.path.exists(path) or path in _PACKAGED_DATASETS_MODULES)


@contextmanager
def watch_datasets(what: str, loaded: list[str] | None = None) -> Iterator[None]:
    """While lm_eval builds tasks: probe the Hub before a Hub dataset is loaded (unless offline), translate
    dataset faults into one line, and append each dataset path loaded to ``loaded``."""
    import datasets

    real = datasets.load_dataset

    def load_dataset(path: str, *args, **kwargs):  # type: ignore[no-untyped-def]
        name = str(path)
        with dataset_errors(what, name):
            if needs_hub(name) and not datasets_offline():
                require_hub(f"load dataset {name} of task(s) {what}", datasets=True)
            result = real(path, *args, **kwargs)
        if loaded is not None:
            loaded.append(name if not kwargs.get("name") and not args else f"{name} ({kwargs.get('name') or args[0]})")
        return result

    datasets.load_dataset = load_dataset
    try:
        with dataset_errors(what, None):
            yield
    finally:
        datasets.load_dataset = real


@contextmanager
def hub_model_errors(model: str) -> Iterator[None]:
    """Network faults while reading a Hub model become :class:`HubUnreachableError`."""
    try:
        yield
    except RblnEvalError:
        raise
    except Exception as exc:
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)) and hub_offline():
            raise NotCachedError(
                f"{model} is not in the HF cache and HF_HUB_OFFLINE is set: "
                f"run `rbln-eval prefetch --model {model}` on a connected machine and copy the HF cache"
            ) from None
        reason = network_reason(exc)
        if reason is None:
            raise
        raise HubUnreachableError(f"cannot reach the Hub at {endpoint()} ({reason}) to read {model}: {offline_hint(False)}") from None


def describe_failure(exc: BaseException, debug: bool = False) -> tuple[str, int]:
    """The one line and exit status for any failure that reaches the command line."""
    if isinstance(exc, RblnEvalError):
        return str(exc), exc.exit_code
    reason = network_reason(exc)
    if reason is not None:
        return f"cannot reach the Hub at {endpoint()} ({reason}): {offline_hint(True)}", 2
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__
    return text + ("" if debug else " (run with --debug or RBLN_EVAL_DEBUG=1 for the traceback)"), 1
