"""Speech recognition: Whisper (``RBLNAutoModelForSpeechSeq2Seq``) and CTC models such as Wav2Vec2
(``RBLNAutoModelForCTC``), scored on lm_eval's audio requests by the ``rbln-audio`` model."""

from rbln_eval.families.speech.family import CTCFamily, SpeechSeq2SeqFamily

__all__ = ["CTCFamily", "SpeechSeq2SeqFamily"]
