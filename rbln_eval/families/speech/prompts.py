"""Whisper's decoder prompt: start of transcript, language, task and no-timestamps tokens, from the bundle's
generation config and the ``language`` / ``task`` model_args, as transformers' ``generate`` builds it."""

from __future__ import annotations

from typing import Any

from rbln_eval.errors import ConfigError
from rbln_eval.families.speech.programs import DETECT_LANGUAGE

TASKS = ("transcribe", "translate")


def language_token_id(generation: Any, language: str) -> int:
    """The token of ``language``: a token (``<|en|>``), a code (``en``) or a name (``english``)."""
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    lang_to_id = getattr(generation, "lang_to_id", None) or {}
    name = language.lower()
    token = name if name in lang_to_id else f"<|{TO_LANGUAGE_CODE.get(name, name)}|>"
    if token not in lang_to_id:
        known = ", ".join(sorted(t.strip("<|>") for t in lang_to_id)[:12]) or "none (an English-only model)"
        raise ConfigError(f"{language!r} is not one of the model's languages ({known})", option="language")
    return int(lang_to_id[token])


def decoder_prompt(generation: Any, language: str | None = None, task: str | None = None) -> list[int]:
    """The init tokens of a transcription; :data:`DETECT_LANGUAGE` where the language is to be detected."""
    language = language or getattr(generation, "language", None)
    task = task or getattr(generation, "task", None)
    if task is not None and task not in TASKS:
        raise ConfigError(f"must be one of {', '.join(TASKS)}, got {task!r}", option="task")
    task_to_id = getattr(generation, "task_to_id", None) or {}
    if task is not None and task not in task_to_id:
        raise ConfigError(f"{task!r} is not a task of this model (its generation config has no task tokens)", option="task")
    prompt: list[int] = [int(generation.decoder_start_token_id)]
    if language is None and task is None:
        for position, token in getattr(generation, "forced_decoder_ids", None) or ():
            if position != len(prompt):
                break
            prompt.append(DETECT_LANGUAGE if token is None else int(token))
    if language is not None:
        token = language_token_id(generation, language)
        prompt = [prompt[0], token, *prompt[2:]] if len(prompt) > 1 else [*prompt, token]
    elif getattr(generation, "lang_to_id", None) and (len(prompt) == 1 or prompt[1] == DETECT_LANGUAGE):
        prompt = [prompt[0], DETECT_LANGUAGE, *prompt[2:]]
    task_ids = set(task_to_id.values())
    if task is not None:
        if any(t in task_ids for t in prompt):
            prompt = [task_to_id[task] if t in task_ids else t for t in prompt]
        else:
            prompt.append(int(task_to_id[task]))
    elif language is not None and task_to_id and not any(t in task_ids for t in prompt):
        prompt.append(int(task_to_id["transcribe"]))
    no_timestamps = getattr(generation, "no_timestamps_token_id", None)
    if not getattr(generation, "return_timestamps", False) and no_timestamps is not None and prompt[-1] != no_timestamps:
        prompt.append(int(no_timestamps))
    return prompt
