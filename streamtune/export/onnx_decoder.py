"""Our ONNX Runtime streaming decoder over the exported encoder / decoder / joiner (greedy RNN-T).

How an exported encoder is fed ("export" feeding, shared with ``StreamingRunner(feeding="export")``):
the audio is preceded by ``pre_encode_cache`` hops of digital silence, every step takes a fixed window
of cache + chunk mel frames advancing by one chunk, and the graph drops its fixed
``drop_extra_pre_encoded`` (2) subsampled frames. That differs from our exact PyTorch streaming in the
first step (which clips at the utterance start; the graph cannot), so ONNX is compared with PyTorch
streaming fed the same way (``onnx_check``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def ort_session(path: Path, threads: int = 1, sha256: str | None = None):
    """An ONNX Runtime CPU session of ``path``; with ``sha256``, built from the very bytes read and checked (a file
    swapped after ``verify`` is refused). A graph with external weights (over 2 GB) is loaded by path."""
    import onnxruntime as ort

    from streamtune.errors import UserError

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    path = Path(path)
    external = any(p.name.startswith(path.name + ".") for p in path.parent.iterdir())
    if sha256 is None or external:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path}: its bytes are not those verify checked (the file changed); not loaded")
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


class OrtStreamingDecoder:
    """Greedy RNN-T over the exported encoder / decoder / joiner, chunk by chunk, one stream at a time.

    ``decode(feats)`` takes export-fed features (``StreamingRunner(feeding="export").features``) and runs
    exactly the windows ``StreamingRunner(feeding="export")`` runs; ``max_symbols`` per frame as NeMo's
    greedy decoding (``decoding.greedy.max_symbols``).
    """

    def __init__(self, mode_dir: str | Path, max_symbols: int = 10, threads: int = 1,
                 hashes: dict[str, str] | None = None):
        # hashes: sha256 per file name (a bundle manifest's), to load exactly the bytes verify checked.
        mode_dir, hashes = Path(mode_dir), hashes or {}
        self.encoder, self.decoder, self.joiner = (ort_session(mode_dir / f"{n}.onnx", threads, hashes.get(f"{n}.onnx"))
                                                   for n in ("encoder", "decoder", "joiner"))
        meta = self.encoder.get_modelmeta().custom_metadata_map
        self.window = int(meta["window_size"])
        self.shift = int(meta["chunk_shift"])
        self.pre_cache = int(meta["pre_encode_cache_size"])
        self.vocab_size = int(meta["vocab_size"])
        self.blank = self.vocab_size
        self.cache_channel = (1, int(meta["cache_last_channel_dim1"]), int(meta["cache_last_channel_dim2"]),
                              int(meta["cache_last_channel_dim3"]))
        self.cache_time = (1, int(meta["cache_last_time_dim1"]), int(meta["cache_last_time_dim2"]),
                           int(meta["cache_last_time_dim3"]))
        self.pred_layers, self.pred_hidden = int(meta["pred_rnn_layers"]), int(meta["pred_hidden"])
        self.max_symbols = max_symbols
        self._enc_in = [i.name for i in self.encoder.get_inputs()]
        self._dec_in = [i.name for i in self.decoder.get_inputs()]
        self._join_in = [i.name for i in self.joiner.get_inputs()]

    def _predict(self, token: int, states):
        out = self.decoder.run(None, dict(zip(self._dec_in, [
            np.array([[token]], dtype=np.int32), np.array([1], dtype=np.int32), *states])))
        return out[0], (out[2], out[3])  # [1, H, 1], new (h, c)

    def _start(self):
        """The prediction net after the start-of-sequence (the blank, blank_as_pad): (output, states)."""
        states = (np.zeros((self.pred_layers, 1, self.pred_hidden), dtype=np.float32),) * 2
        return self._predict(self.blank, states)

    def decode(self, feats: np.ndarray, keep_encoded: bool = False, record: list | None = None, turns=None,
               segments: list | None = None, silence_frames: int = 0, hop_s: float = 0.01):
        """``feats``: [F, T] float32, silence-padded. Returns (tokens, encoder output [T', D] or None).

        ``record``: a list to append every encoder step's inputs to (calibration for static quantisation).
        ``turns``: a :class:`streamtune.streaming.endpoint.Turns` to cut the stream into segments as the PyTorch
        paths do (the decoder starts afresh at each endpoint, the encoder caches carry on), each closed segment
        appended to ``segments``; the tokens returned are then the segments' (without ``<EOU>``).
        ``silence_frames`` and ``hop_s`` give the audio time of a step's end as ``StreamingRunner(feeding="export")``
        counts it."""
        channel = np.zeros(self.cache_channel, dtype=np.float32)
        time_ = np.zeros(self.cache_time, dtype=np.float32)
        channel_len = np.zeros(1, dtype=np.int64)
        dec_out, states = self._start()
        tokens, pieces = [], []
        hyp, stamps = [], []  # the current segment's hypothesis: tokens, frames since it started
        closed_segments = segments if segments is not None else []
        total = feats.shape[1]
        start = self.pre_cache
        while start < total:
            window = feats[:, start - self.pre_cache: start + self.shift]
            inputs = dict(zip(self._enc_in, [window[None].astype(np.float32), np.array([window.shape[1]],
                                                                                       dtype=np.int64),
                                             channel, time_, channel_len]))
            if record is not None and window.shape[1] == self.window:  # full windows: one shape to calibrate
                record.append(inputs)
            outs = self.encoder.run(None, inputs)
            encoded, enc_len, channel, time_, channel_len = outs
            n_frames = int(enc_len[0])
            if keep_encoded:
                pieces.append(encoded[0, :, :n_frames].T)
            offset = (turns.decoded - turns.hyp_start) if turns is not None else 0
            for t in range(n_frames):
                frame = encoded[:, :, t: t + 1]
                for _ in range(self.max_symbols):
                    logits = self.joiner.run(None, dict(zip(self._join_in, [frame, dec_out])))[0]
                    k = int(np.argmax(logits.reshape(-1)[: self.vocab_size + 1]))
                    if k == self.blank:
                        break
                    tokens.append(k)
                    hyp.append(k)
                    stamps.append(offset + t)
                    dec_out, states = self._predict(k, states)
            if turns is not None:
                at_s = (min(start + self.shift, total) - silence_frames) * hop_s
                closed = turns.step(hyp, stamps, n_frames, at_s)
                if closed is not None:
                    closed_segments.append(closed)
                    hyp, stamps = [], []
                    dec_out, states = self._start()
            start += self.shift
        encoded_all = np.concatenate(pieces) if keep_encoded and pieces else None
        if turns is not None:
            closed_segments.append(turns.close((total - silence_frames) * hop_s, "end"))
            tokens = [t for seg in closed_segments for t in seg.tokens]
        return tokens, encoded_all
