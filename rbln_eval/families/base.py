"""What a model family is: the policy one kind of model follows, and the compile options every family reads.

A :class:`Family` knows which configs it compiles and through which optimum-rbln auto class, how it spells
the compile options, what a bundle carries besides the model, how a request is fitted into the compiled
lengths, how a generation is budgeted, how its programs talk to the device, what a job costs in device work,
which lm_eval model scores it and what its reference is. The rest of rbln-eval asks the family (through
:mod:`rbln_eval.families.registry`) instead of branching on the model class, so a new family is one folder
and one registry line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from rbln_eval.errors import ConfigError

if TYPE_CHECKING:  # the core's types; importing them would load torch, and CompileOptions must stay cheap
    from rbln_eval.core.programs import Program
    from rbln_eval.core.shapes import ReplicaShape
    from rbln_eval.core.work import Work

LOGITS_MODES = ("all", "last")


@dataclass(frozen=True)
class CompileOptions:
    """What a user asks for on ``rbln-eval compile``, in rbln-eval's terms; each family spells it for optimum-rbln."""

    batch_size: int | None = None
    max_seq_len: int | None = None
    tp: int | None = None
    logits: str = "all"
    dtype: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # optimum-rbln's own options (``--rbln-config``)

    #: lm_eval model_args spelling of the options (the CLI spells them ``--batch-size``…, sweep plans by field name).
    MODEL_ARGS: ClassVar[Mapping[str, str]] = {
        "batch_size": "rbln_batch_size", "max_seq_len": "rbln_max_seq_len", "tp": "rbln_tensor_parallel_size",
        "logits": "logits", "dtype": "rbln_dtype",
    }

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The options a user sets by name (everything but ``extra``)."""
        return tuple(f.name for f in fields(cls) if f.name != "extra")

    def __post_init__(self) -> None:
        if self.logits not in LOGITS_MODES:
            raise ConfigError(f"must be one of {', '.join(LOGITS_MODES)}, got {self.logits!r}", option="logits")
        for name in ("batch_size", "max_seq_len", "tp"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"must be a positive integer, got {value!r}", option=name)

    def shared_config(self) -> dict[str, Any]:
        """The options every family spells alike: ``extra``, then batch size, tensor parallelism and dtype."""
        config: dict[str, Any] = dict(self.extra)
        if self.batch_size is not None:
            config["batch_size"] = self.batch_size
        if self.tp is not None:
            config["num_devices"] = self.tp
        if self.dtype is not None:
            config["dtype"] = self.dtype
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


@dataclass(frozen=True)
class Fitted:
    """A request after fitting: the tokens the device sees, and whether anything was cut off."""

    context: list[int]
    continuation: list[int]
    truncated: str | None = None  # what was truncated ("a request", "a context", …), None if nothing


class Family:
    """The policy of one model family; see the module docstring."""

    name: str
    auto_class: str
    #: transformers' auto-model mapping whose architectures optimum-rbln compiles for this family.
    transformers_mapping: str
    is_encoder_decoder: bool = False
    #: lm_eval's ``hf`` model ``backend`` for the same model (the reference of ``compare``).
    hf_backend: str = "causal"
    #: The lm_eval model that is the reference.
    reference_model = "hf"
    #: Whether the reference is given the compiled length to truncate to, as the bundle does.
    reference_truncates: bool = False
    #: The lm_eval model class that scores bundles of this family over an executor.
    lm_class: type
    #: Whether a pushed bundle loads as it is with ``from_pretrained(repo, revision=…, export=False)``.
    hub_loadable = True
    #: Fields of the key's compile config that are recorded, not passed to optimum-rbln.
    key_only_fields: tuple[str, ...] = ()
    #: Compiled lengths filled from the model's own context length when not given.
    length_keys: tuple[str, ...] = ()
    #: Detection order: families with a higher priority are asked first (a special case before its base).
    priority = 0
    #: Whether bundles carry a tokenizer (an image classifier reads no text).
    has_tokenizer = True
    #: Whether the plain ``rbln`` model scores this family's bundles on text requests (else only its own lm does).
    scores_text = True
    #: The lm_eval request types the family's lm answers.
    request_types: tuple[str, ...] = ("loglikelihood", "loglikelihood_rolling", "generate_until")

    # ---- compiling --------------------------------------------------------------------------------
    def supported_types(self) -> list[str]:
        """Model types optimum-rbln compiles for this family (needs the ``rebel`` SDK or the simulator)."""
        import optimum.rbln as rbln
        import optimum.rbln.transformers.models.auto.modeling_auto  # noqa: F401 (adds its types to transformers' maps)
        from transformers.models.auto import modeling_auto

        mapping = getattr(modeling_auto, self.transformers_mapping)
        return sorted(t for t, name in mapping.items() if isinstance(name, str) and hasattr(rbln, f"RBLN{name}"))

    def verified_types(self) -> list[str]:
        """Model types whose bundles rbln-eval's tests verify against their reference (``doctor`` prints them
        where they are fewer than :meth:`supported_types`); by default every type optimum-rbln compiles."""
        return self.supported_types()

    def matches(self, model_config: Any) -> bool:
        """Whether ``model_config`` is a model of this family that optimum-rbln compiles."""
        return (
            getattr(model_config, "model_type", None) in self.supported_types()
            and bool(getattr(model_config, "is_encoder_decoder", False)) == self.is_encoder_decoder
        )

    def has_own_head(self, model_config: Any) -> bool:
        """Whether the checkpoint's ``architectures`` name this family's head (optimum-rbln's auto classes read
        them): a BERT classifier has no masked-LM head to score with, a masked LM no QA head."""
        from transformers.models.auto import modeling_auto

        mapping = getattr(modeling_auto, self.transformers_mapping)
        return mapping.get(model_config.model_type) in (getattr(model_config, "architectures", None) or [])

    def compile_options(self, max_seq_len: int | None, logits: str) -> dict[str, Any]:
        """The family's rbln_config spelling of ``--max-seq-len`` and ``--logits``."""
        return {}

    def rbln_config(self, options: CompileOptions, model_config: Any) -> dict[str, Any]:
        """The compile-time rbln_config of ``options`` for this model, default lengths filled in."""
        config = options.shared_config()
        for name, value in self.compile_options(options.max_seq_len, options.logits).items():
            if name == "max_seq_len":
                config[name] = value
            else:
                config.setdefault(name, value)
        for name, length in self.default_lengths(model_config).items():
            config.setdefault(name, length)
        return config

    def export_config(self, model_config: Any) -> Any | None:
        """The model config to hand optimum-rbln in place of the checkpoint's, completed with fields it reads that
        transformers does not define; ``None``: the checkpoint's own."""
        return None

    def compiler_config(self, rbln_config: dict[str, Any]) -> dict[str, Any]:
        """What of a key's compile config is passed to optimum-rbln (all of it but the key-only fields)."""
        return {k: v for k, v in rbln_config.items() if k not in self.key_only_fields}

    def text_config(self, compile_config: Mapping[str, Any]) -> dict[str, Any]:
        """The compile settings of the part that reads text (batch size, lengths, logits, tp), for short names."""
        return dict(compile_config)

    def save_extras(self, model_id: str, directory: Path, load_kwargs: dict[str, Any], log: Any) -> None:
        """Files the bundle needs besides optimum-rbln's and the tokenizer."""

    def default_lengths(self, model_config: Any) -> dict[str, int]:
        """Compiled lengths to use when none is given: the model's own context length."""
        length = getattr(model_config, "max_position_embeddings", None) or getattr(model_config, "n_positions", None)
        return {name: int(length) for name in self.length_keys} if length else {}

    # ---- the reference ------------------------------------------------------------------------------
    def reference_lm(
        self, pretrained: str, revision: str | None, device: str, max_length: int | None, batch_size: int, **settings: Any,
    ) -> Any:
        """lm_eval's own model for the same weights in float32: the reference of ``rbln-eval compare``.

        ``settings`` are the scoring model_args the bundle's lm shares with its reference
        (``BundleLM.reference_settings``); lm_eval's ``hf`` model takes none.
        """
        from lm_eval.models.huggingface import HFLM

        kwargs: dict[str, Any] = {"revision": revision} if revision else {}
        if max_length and self.reference_truncates:
            kwargs["max_length"] = max_length  # truncate like the bundle does
        return HFLM(pretrained=pretrained, backend=self.hf_backend, dtype="float32", device=device, batch_size=batch_size, **kwargs)

    # ---- dataset tasks (models scored on datasets rather than lm_eval's prompts) -------------------------
    #: The kind of dataset task this family's bundles are scored on (``image-classification``, …); ``None``: the
    #: family is scored on lm_eval's tasks by :attr:`lm_class`.
    task_kind: str | None = None
    #: Whether every example is checked (:meth:`check_example`) before the first device call.
    checks_examples = False

    def load_preprocessor(self, path: Path) -> Any:
        """The bundle's preprocessor (image processor, feature extractor, tokenizer) of dataset examples."""
        raise NotImplementedError

    def example_inputs(self, preprocessor: Any, example: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
        """One dataset example's model inputs (tensors without the batch dimension); ``columns`` names its fields."""
        raise NotImplementedError

    def check_example(self, preprocessor: Any, example: Mapping[str, Any], columns: Mapping[str, str]) -> None:
        """Refuse an example before any device work, from what is cheap to read (an audio file's header); only
        called where :attr:`checks_examples`."""

    def example_features(self, preprocessor: Any, example: Mapping[str, Any], columns: Mapping[str, str]) -> list[dict[str, Any]]:
        """The rows one dataset example takes (one, unless its input is split: a long QA context's windows)."""
        return [self.example_inputs(preprocessor, example, columns)]

    def example_prediction(
        self, example: Mapping[str, Any], columns: Mapping[str, str], features: Sequence[Mapping[str, Any]],
        outputs: Sequence[Any], settings: Mapping[str, Any],
    ) -> Any:
        """What an example's rows' outputs predict, under the task's ``settings``: a classifier's logits."""
        return outputs[0]

    # ---- the device side ----------------------------------------------------------------------------
    def backend(self, model: Any) -> Any:
        """The device backend over a loaded optimum-rbln model of this family."""
        raise NotImplementedError

    def loglikelihood_program(self, backend: Any, context: Sequence[int], continuations: Sequence[Sequence[int]]) -> "Program":
        raise NotImplementedError

    def greedy_program(
        self, backend: Any, tokens: Sequence[int], max_new_tokens: int,
        stop: Callable[[list[int]], bool], eos_token_ids: frozenset[int],
    ) -> "Program":
        raise NotImplementedError

    def with_inputs(self, program: "Program", work: "Work") -> "Program":
        """``program`` given the work item's inputs beyond tokens (a vision-language prompt's images)."""
        return program

    # ---- requests -----------------------------------------------------------------------------------
    def fit(self, shape: "ReplicaShape", context: list[int], continuation: list[int]) -> Fitted:
        """Left-truncate a loglikelihood request to the compiled lengths, as lm_eval's ``hf`` model does."""
        raise NotImplementedError

    def generation_tokens(self, tokenizer: Any, context: str, add_bos_token: bool | None) -> list[int]:
        """The tokens of a generation context, as lm_eval's ``hf`` model encodes them."""
        raise NotImplementedError

    def generation_limit(self, shape: "ReplicaShape", max_gen: int) -> int:
        """How many context tokens a generation request may keep."""
        raise NotImplementedError

    def generation_steps(self, context_tokens: int, max_gen: int) -> int:
        """The number of new tokens to generate at most for ``max_gen_toks`` ``max_gen``."""
        return max_gen

    def job_cost(self, shape: "ReplicaShape", context: int, continuations: Sequence[int]) -> int:
        """Device work of one loglikelihood job, in decode tokens: its prefill, then teacher-forced steps."""
        return shape.prefill_cost(context) + sum(continuations) - len(continuations)

    def generation_cost(self, shape: "ReplicaShape", context: int, max_gen: int) -> int:
        """Device work of one generation at most: its prefill, then ``max_gen`` decode steps."""
        return shape.prefill_cost(context) + max_gen

    def unscorable_tasks(self, output_types: Mapping[str, str]) -> list[str]:
        """The tasks of ``{task: lm_eval output_type}`` whose requests this family's lm does not answer."""
        request_type = {"multiple_choice": "loglikelihood"}
        return sorted(task for task, kind in output_types.items() if request_type.get(kind, kind) not in self.request_types)
