"""From a model and compile options to a stored bundle: key it, find it, or compile it once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from rbln_eval.build.compiler import compile_into, inspect_model
from rbln_eval.families.base import CompileOptions
from rbln_eval.families.registry import family_of
from rbln_eval.identity import BundleKey, ModelSource, resolve_source
from rbln_eval.store import Bundle, BuildContext, BuildResult, Store
from rbln_eval.identity.target import npu_of, resolve_target

if TYPE_CHECKING:
    from rbln_eval.remotes import Remote


@dataclass(frozen=True)
class CompileRequest:
    """A model to compile: its pinned source, detected class, normalized config and target."""

    source: ModelSource
    model_class: str
    compile_config: dict[str, Any]
    target: str
    key: BundleKey

    @property
    def npu(self) -> str:
        """The device name optimum-rbln compiles for (the target without the simulator mark)."""
        return npu_of(self.target)

    @property
    def alias(self) -> str:
        fields = family_of(self.model_class).text_config(self.key.compile)
        tag = " ".join(f"{k}={fields[k]}" for k in ("batch_size", "logits_to_keep", "max_seq_len", "num_devices") if k in fields)
        short = tag.replace("batch_size=", "bs").replace("max_seq_len=", "len").replace("num_devices=", "tp")
        short = short.replace("logits_to_keep=0", "all").replace("logits_to_keep=1", "last").replace(" ", "-")
        model = self.source.id if self.source.kind == "hub" else self.source.display.split("@")[0]
        revision = (self.source.revision or self.source.digest or "")[:12]
        return f"{model}@{revision}:{short}"


def plan_compile(
    model: str,
    options: CompileOptions,
    revision: str | None = None,
    npu: str | None = None,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
) -> CompileRequest:
    """Resolve ``model`` and ``options`` to a bundle key without compiling anything."""
    source = resolve_source(model, revision, token=token)
    model_class, config = inspect_model(source, token=token, trust_remote_code=trust_remote_code)
    rbln_config = family_of(model_class).rbln_config(options, config)
    target = resolve_target(npu)
    key = BundleKey.build(source, model_class, rbln_config, target)
    return CompileRequest(source, model_class, key.compile, target, key)


def compile_bundle(
    request: CompileRequest,
    store: Store,
    *,
    force: bool = False,
    token: str | bool | None = None,
    trust_remote_code: bool = False,
    on_wait: Callable[[str], None] | None = None,
) -> BuildResult:
    """The bundle for ``request``: from the store, or compiled once (``force`` rebuilds it)."""

    def build(ctx: BuildContext) -> None:
        compile_into(
            ctx.path, request.source, request.model_class, request.compile_config, request.npu, ctx.log,
            token=token, trust_remote_code=trust_remote_code,
        )

    info = {
        "model": request.source.id if request.source.kind == "hub" else request.source.display.split("@")[0],
        "model_path": request.source.id,
        "alias": request.alias,
    }
    result = store.get_or_build(request.key, build, info=info, on_wait=on_wait, force=force)
    store.set_ref(request.alias, result.bundle.digest)
    return result


def find_or_pull(
    request: CompileRequest,
    store: Store,
    remotes: Sequence[Remote] = (),
    notify: Callable[[str], None] | None = None,
) -> tuple[Bundle, str | None] | None:
    """The bundle for ``request`` without compiling: the local store's, else pulled from the first remote
    that has its key. Returns ``(bundle, remote name or None)``, or ``None`` when nobody has the key.

    Unreachable remotes are skipped (``notify`` says so); a remote bundle that fails verification raises.
    """
    bundle = store.lookup(request.key.digest)
    if bundle is not None:
        return bundle, None
    if not remotes:
        return None
    from rbln_eval.remotes.pull import pull_digest

    pulled = pull_digest(request.key.digest, store, list(remotes), notify)
    if pulled is None:
        return None
    if store.read_ref(request.alias) is None:
        store.set_ref(request.alias, pulled.bundle.digest)
    return pulled.bundle, pulled.source.remote
