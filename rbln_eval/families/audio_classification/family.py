"""Audio classifiers (``RBLNAutoModelForAudioClassification``: the Audio Spectrogram Transformer): one forward call
per batch of clips.

An example is a clip (datasets' ``{"array", "sampling_rate"}``, a file path, or undecoded ``{"path", "bytes"}``:
files are read with soundfile, channels averaged to one) at the feature extractor's sampling rate, which is
checked, never resampled. The bundle's feature extractor turns it into ``input_values`` (``[frames, mel bins]``,
padded or cut to the frames the graph is compiled for); the key holds those frames and mel bins. They are scored
on dataset tasks (``rbln_eval.evaluation.datasets``), not lm_eval's prompts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from rbln_eval.core.audio import as_clip, check_rate, check_sampling_rate, clip_rate
from rbln_eval.core.batched import BatchedForwardBackend
from rbln_eval.core.classifier import BundleClassifier
from rbln_eval.errors import ConfigError
from rbln_eval.families.base import CompileOptions, Family


class AudioClassifierBackend(BatchedForwardBackend):
    """``input_values`` of the batch → logits ``[batch, labels]``."""

    def __init__(self, model: Any) -> None:
        super().__init__(model, int(model.rbln_config.batch_size), int(model.rbln_config.max_length))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model(input_values=inputs["input_values"]).logits


class AudioClassificationFamily(Family):
    """AST audio classifiers."""

    name = "audio-classification"
    auto_class = "RBLNAutoModelForAudioClassification"
    transformers_mapping = "MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES"
    task_kind = "audio-classification"
    key_only_fields = ("inputs",)
    request_types = ()
    lm_class = BundleClassifier
    scores_text = False
    has_tokenizer = False

    def rbln_config(self, options: CompileOptions, model_config: Any) -> dict[str, Any]:
        if options.max_seq_len is not None:
            raise ConfigError(
                f"does not apply to an audio classifier (its input is the model's {model_config.max_length} frames)",
                option="max_seq_len",
            )
        config = options.shared_config()
        config["max_length"] = int(model_config.max_length)  # the frames the model's position embeddings cover
        config["inputs"] = {  # what shapes the graph besides the batch: recorded in the key
            "max_length": int(model_config.max_length),
            "num_mel_bins": int(model_config.num_mel_bins),
        }
        return config

    def save_extras(self, model_id: str, directory: Path, load_kwargs: dict[str, Any], log: Any) -> None:
        if (directory / "preprocessor_config.json").exists():
            return
        from transformers import AutoFeatureExtractor

        AutoFeatureExtractor.from_pretrained(model_id, **load_kwargs).save_pretrained(directory)

    def backend(self, model: Any) -> AudioClassifierBackend:
        return AudioClassifierBackend(model)

    def load_preprocessor(self, path: Path) -> Any:
        """The bundle's feature extractor, checked against the frames and mel bins the graph is compiled for."""
        from transformers import AutoConfig, AutoFeatureExtractor

        extractor = AutoFeatureExtractor.from_pretrained(str(path))
        config = AutoConfig.from_pretrained(str(path))
        made = (getattr(extractor, "max_length", None), getattr(extractor, "num_mel_bins", None))
        if made != (config.max_length, config.num_mel_bins):
            raise ConfigError(
                f"bundle {path.name}: its feature extractor makes {made[0]} frames of {made[1]} mel bins; the model "
                f"takes {config.max_length} of {config.num_mel_bins}"
            )
        return extractor

    checks_examples = True

    def check_example(self, preprocessor: Any, example: Mapping[str, Any], columns: Mapping[str, str]) -> None:
        check_sampling_rate(clip_rate(example[columns["audio"]]), int(preprocessor.sampling_rate), "the model's feature extractor")

    def example_inputs(self, preprocessor: Any, example: Mapping[str, Any], columns: Mapping[str, str]) -> dict[str, Any]:
        clip = as_clip(example[columns["audio"]])
        check_rate(clip, int(preprocessor.sampling_rate), "the model's feature extractor")
        values = preprocessor(clip.samples, sampling_rate=clip.rate, return_tensors="pt")["input_values"]
        return {"input_values": values[0]}
