"""sherpa-onnx (PyPI ``sherpa-onnx``) decoding the exported files as an online NeMo transducer.

sherpa-onnx computes its own features (kaldi-style fbank) and feeds fixed windows from the first
sample, never runs a final partial window, and has no padding of its own. Measured on the demo model
(docs/export.md, "Feeding an exported encoder"), what makes it agree with our streaming:

* **left padding** ``16 * hop + hop / 2`` samples of silence (2,640 at 16 kHz): 16 frames put its
  windows on the grid the model was trained on (as ``StreamingRunner(feeding="export")``), and half a
  hop moves kaldi's frames (no centre padding) onto NeMo's centred STFT frames (docs/export.md gives the WER
  without it, with it and with 80 samples less).
* **tail padding** ``chunk_shift + 2`` hops of silence, so that the last real frames get a window.

What stays different is the feature extraction itself (fbank vs. NeMo's mel front end: frame
pre-emphasis, log floor); see ``onnx.json`` for per-utterance differences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from streamtune.export.onnx_export import read_metadata
from streamtune.streaming.endpoint import EOU

SAMPLE_RATE = 16000
HOP = 160


def padding_samples(pre_cache: int, subsampling: int, chunk_shift: int) -> tuple[int, int]:
    """Silence (samples) before and after the audio; see the module docstring for why."""
    return (pre_cache + subsampling - 1) * HOP + HOP // 2, (chunk_shift + 2) * HOP


def _metadata(mode_dir: Path) -> dict[str, str]:
    return read_metadata(mode_dir / "encoder.onnx")


def recognizer(mode_dir: Path, threads: int = 1, beam: int = 0, hotwords: list[str] | None = None,
               hotwords_score: float = 1.5):
    """sherpa-onnx's online recognizer on ``mode_dir``: greedy search, or modified beam search with ``beam``
    active paths and, optionally, ``hotwords`` (words/phrases in the tokenizer's case; they need the
    ``bpe.vocab`` the export writes)."""
    import os
    import tempfile

    import sherpa_onnx

    meta = _metadata(mode_dir)
    search = {"decoding_method": "greedy_search"}
    if beam or hotwords:
        search = {"decoding_method": "modified_beam_search", "max_active_paths": max(beam, 4)}
    if hotwords:
        if not (mode_dir / "bpe.vocab").exists():
            raise FileNotFoundError(f"{mode_dir / 'bpe.vocab'}: hotwords need it (export the model again)")
        words = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False)
        words.write("".join(f"{w}\n" for w in hotwords))
        words.close()
        search.update(hotwords_file=words.name, hotwords_score=hotwords_score, modeling_unit="bpe",
                      bpe_vocab=str(mode_dir / "bpe.vocab"))
    try:
        return sherpa_onnx.OnlineRecognizer.from_transducer(
            tokens=str(mode_dir / "tokens.txt"), encoder=str(mode_dir / "encoder.onnx"),
            decoder=str(mode_dir / "decoder.onnx"), joiner=str(mode_dir / "joiner.onnx"), num_threads=threads,
            sample_rate=SAMPLE_RATE, feature_dim=int(meta["feat_dim"]), model_type="nemo_transducer",
            low_freq=0.0, high_freq=SAMPLE_RATE / 2, dither=0.0, **search)
    finally:
        if hotwords:
            os.unlink(search["hotwords_file"])  # read when the recognizer is built


def sherpa_decode(mode_dir: Path, audios: list[np.ndarray], threads: int = 1, pad: bool = True, beam: int = 0,
                  hotwords: list[str] | None = None, hotwords_score: float = 1.5) -> tuple[list[str], dict]:
    """Transcripts of 16 kHz mono float32 ``audios``, each its own stream; and the padding used."""
    rec = recognizer(mode_dir, threads, beam, hotwords, hotwords_score)
    meta = _metadata(mode_dir)
    left, tail = padding_samples(int(meta["pre_encode_cache_size"]), int(meta["subsampling_factor"]),
                                 int(meta["chunk_shift"])) if pad else (0, 0)
    texts = []
    for audio in audios:
        stream = rec.create_stream()
        stream.accept_waveform(SAMPLE_RATE, np.concatenate([np.zeros(left, np.float32), audio.astype(np.float32),
                                                            np.zeros(tail, np.float32)]))
        stream.input_finished()
        while rec.is_ready(stream):
            rec.decode_stream(stream)
        text = rec.get_result(stream).strip()
        if EOU in text:  # a turn-taking model's end-of-turn token is not text (nor in our decoders' texts)
            text = " ".join(text.replace(EOU, " ").split())
        texts.append(text)
    return texts, {"left_samples": left, "tail_samples": tail, "sample_rate": SAMPLE_RATE}
