"""The registry of model families: the built-in ones, registered like any other, and the lookups the core uses.

A family is a :class:`~rbln_eval.families.base.Family` instance. The built-in families are listed in
:data:`BUILTIN_FAMILIES`; :func:`register` adds another (a plugin, or a test's toy family). Everything
outside ``families/`` asks this module, never a family by name.
"""

from __future__ import annotations

from rbln_eval.families.audio_classification import AudioClassificationFamily
from rbln_eval.families.base import Family
from rbln_eval.families.causal import CausalFamily
from rbln_eval.families.extractive_qa import ExtractiveQAFamily
from rbln_eval.families.image_classification import ImageClassificationFamily
from rbln_eval.families.masked_lm import MaskedLMFamily
from rbln_eval.families.seq2seq import Seq2SeqFamily
from rbln_eval.families.speech import CTCFamily, SpeechSeq2SeqFamily
from rbln_eval.families.text_classification import TextClassificationFamily
from rbln_eval.families.vision_language import VisionLanguageFamily

#: The families rbln-eval ships, one line each.
BUILTIN_FAMILIES: tuple[Family, ...] = (
    CausalFamily(),
    Seq2SeqFamily(),
    VisionLanguageFamily(),
    MaskedLMFamily(),
    SpeechSeq2SeqFamily(),
    CTCFamily(),
    ImageClassificationFamily(),
    AudioClassificationFamily(),
    TextClassificationFamily(),
    ExtractiveQAFamily(),
)

_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` (replacing one of the same name); returns it."""
    _FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove the family called ``name`` (a test's toy family, after the test)."""
    _FAMILIES.pop(name, None)


for _builtin in BUILTIN_FAMILIES:
    register(_builtin)


def families() -> list[Family]:
    """Every registered family, in detection order (higher priority first, then registration order)."""
    ordered = list(_FAMILIES.values())
    return sorted(ordered, key=lambda family: -family.priority)


def family_of(model_class: str) -> Family:
    """The family of a bundle key's ``model_class``."""
    try:
        return _FAMILIES[model_class]
    except KeyError:
        raise ValueError(f"unknown model class {model_class!r}; known: {', '.join(_FAMILIES)}") from None


def detect_family(model_config: object) -> Family | None:
    """The first family (in detection order) that compiles ``model_config``, or None."""
    for family in families():
        if family.matches(model_config):
            return family
    return None
