"""Audio clips as requests and datasets give them, read and checked for the families that take audio (speech
recognition, audio classification).

A clip is what lm_eval's audio tasks give (``{"array": …, "sampling_rate": …}``, as ``common_voice_en``'s
``doc_to_audio`` returns), a path to an audio file, or datasets' undecoded audio (``{"path": …, "bytes": …}``):
files are read with soundfile. Several channels are averaged to one, as datasets' ``Audio`` does.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from rbln_eval.errors import MultimodalRequestError


@dataclass(frozen=True)
class Clip:
    """One mono clip: float32 samples at ``rate`` Hz."""

    samples: np.ndarray
    rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    def fingerprint(self) -> str:
        """The clip's identity by content (requests on the same clip share its encoder call)."""
        digest = hashlib.sha256(f"{self.rate}:".encode())
        digest.update(np.ascontiguousarray(self.samples).tobytes())
        return digest.hexdigest()


def read_file(source: str | bytes) -> tuple[np.ndarray, int]:
    """Samples and rate of an audio file (a path, or its bytes)."""
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(source) if isinstance(source, bytes) else source, dtype="float32")
    except (OSError, RuntimeError) as exc:  # soundfile.LibsndfileError is a RuntimeError
        name = "audio bytes" if isinstance(source, bytes) else source
        raise MultimodalRequestError(f"cannot read the audio file {name}: {exc}") from None
    return samples, int(rate)


def as_clip(audio: Any) -> Clip:
    """One entry of a request's audio list as a :class:`Clip`."""
    if isinstance(audio, str):
        samples, rate = read_file(audio)
    elif isinstance(audio, dict) and audio.get("array") is not None:
        samples, rate = np.asarray(audio["array"], dtype=np.float32), audio.get("sampling_rate")
        if rate is None:
            raise MultimodalRequestError("an audio array comes without its sampling_rate")
    elif isinstance(audio, dict) and (audio.get("bytes") or audio.get("path")):
        samples, rate = read_file(audio.get("bytes") or audio["path"])
    else:
        raise MultimodalRequestError(
            f"an audio clip must be {{'array', 'sampling_rate'}}, {{'path'}}/{{'bytes'}} or a file path, got {type(audio).__name__}"
        )
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.ndim != 1 or not len(samples):
        raise MultimodalRequestError(f"an audio clip must be a non-empty 1-D or 2-D array, got shape {samples.shape}")
    return Clip(np.ascontiguousarray(samples, dtype=np.float32), int(rate))


def request_clip(aux: Any) -> Clip:
    """The one clip of a request's multimodal argument (``{"audio": [clip]}``)."""
    clips = (aux or {}).get("audio") if isinstance(aux, dict) else None
    if clips is None:
        raise MultimodalRequestError("an audio request has no 'audio' in its arguments (the task needs doc_to_audio)")
    if isinstance(clips, (str, dict)):
        clips = [clips]
    if len(clips) != 1:
        raise MultimodalRequestError(f"a speech recognition request takes one audio clip, got {len(clips)}")
    return as_clip(clips[0])


def clip_rate(audio: Any) -> int:
    """The sampling rate of a clip (as :func:`as_clip` takes it), reading no more of a file than its header."""
    import soundfile

    if isinstance(audio, dict) and audio.get("array") is not None:
        if audio.get("sampling_rate") is None:
            raise MultimodalRequestError("an audio array comes without its sampling_rate")
        return int(audio["sampling_rate"])
    source = audio if isinstance(audio, str) else (audio.get("bytes") or audio.get("path")) if isinstance(audio, dict) else None
    if source is None:
        return as_clip(audio).rate  # says what is wrong with it
    try:
        return int(soundfile.info(io.BytesIO(source) if isinstance(source, bytes) else source).samplerate)
    except (OSError, RuntimeError) as exc:
        name = "audio bytes" if isinstance(source, bytes) else source
        raise MultimodalRequestError(f"cannot read the audio file {name}: {exc}") from None


def check_rate(clip: Clip, expected: int, reader: str) -> None:
    """Refuse a clip at another sampling rate than ``reader``'s (a bundle's feature extractor): never resampled."""
    check_sampling_rate(clip.rate, expected, reader)


def check_sampling_rate(rate: int, expected: int, reader: str) -> None:
    """Refuse a sampling rate other than ``reader``'s: clips are never resampled."""
    if rate != expected:
        raise MultimodalRequestError(
            f"an audio clip is sampled at {rate} Hz; {reader} expects {expected} Hz: resample the "
            f"dataset's audio to {expected} Hz"
        )
