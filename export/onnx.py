"""ONNX per chunk mode, in the layout sherpa-onnx's NeMo streaming transducer loader reads, and our own
ONNX Runtime streaming decoder over those files.

Layout: ``onnx/<ms>ms/{encoder.onnx, decoder.onnx, joiner.onnx, tokens.txt}``. The encoder is exported
with ``cache_support`` after ``set_default_att_context_size`` (the attention mask is baked in: one encoder
per chunk mode); decoder and joiner are the same in every mode and copied beside each encoder, so each
directory is a complete model for sherpa-onnx. The encoder carries the metadata sherpa-onnx reads
(``vocab_size`` without blank, ``window_size`` = pre-encode cache + chunk in mel frames, ``chunk_shift``
= chunk, cache dimensions, ``pred_rnn_layers``, ``pred_hidden``, ``subsampling_factor``,
``normalize_type``) plus ours (``chunk_ms``, ``att_context``).

How an exported encoder is fed ("export" feeding, shared with ``StreamingRunner(feeding="export")``):
the audio is preceded by ``pre_encode_cache`` hops of digital silence, every step takes a fixed window
of cache + chunk mel frames advancing by one chunk, and the graph drops its fixed
``drop_extra_pre_encoded`` (2) subsampled frames. That differs from our exact PyTorch streaming in the
first step (which clips at the utterance start; the graph cannot), so ONNX is compared with PyTorch
streaming fed the same way, and the export-feeding vs exact-streaming agreement is reported beside it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from streamtune.models import ChunkMode


def _encoder_metadata(model, mode: ChunkMode) -> dict[str, str]:
    enc = model.encoder
    cfg = enc.streaming_cfg
    channel, time_, _ = enc.get_initial_cache_state(batch_size=1)
    # Cache tensors are [layers, B, ...] in PyTorch and [B, layers, ...] in the exported graph.
    meta = {
        "model_type": "EncDecRNNTBPEModel",
        "version": "1",
        "vocab_size": model.decoder.vocab_size,
        "window_size": int(cfg.chunk_size[1]) + int(cfg.pre_encode_cache_size[1]),
        "chunk_shift": int(cfg.chunk_size[1]),
        "subsampling_factor": int(enc.subsampling_factor),
        "pred_rnn_layers": int(model.decoder.pred_rnn_layers),
        "pred_hidden": int(model.decoder.pred_hidden),
        "feat_dim": int(enc._feat_in),
        "normalize_type": "" if model.cfg.preprocessor.get("normalize", "NA") in ("NA", None) else
        str(model.cfg.preprocessor.normalize),
        "chunk_ms": mode.chunk_ms,
        "att_context": json.dumps(mode.att_context),
        "pre_encode_cache_size": int(cfg.pre_encode_cache_size[1]),
        "drop_extra_pre_encoded": int(cfg.drop_extra_pre_encoded),
    }
    for k in range(3):
        meta[f"cache_last_channel_dim{k + 1}"] = [channel.shape[0], channel.shape[2], channel.shape[3]][k]
        meta[f"cache_last_time_dim{k + 1}"] = [time_.shape[0], time_.shape[2], time_.shape[3]][k]
    return {k: str(v) for k, v in meta.items()}


def _external_files(graph) -> list[str]:
    """Files the graph's tensors (initializers and node attributes, e.g. large Constants) keep their data in."""
    from onnx.external_data_helper import _get_all_tensors

    return sorted({e.value for t in _get_all_tensors(graph) for e in t.external_data if e.key == "location"})


def _set_metadata(path: Path, meta: dict[str, str]) -> None:
    """Write ``meta`` into the graph; an encoder over 2 GB (torch writes one file per weight beside it) gets its
    weights gathered into one ``<name>.data`` file, which ONNX Runtime and sherpa-onnx read from beside it."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    graph = onnx.load(str(path), load_external_data=False)  # a protobuf over 2 GB cannot be saved whole
    del graph.metadata_props[:]
    for key, value in sorted(meta.items()):
        entry = graph.metadata_props.add()
        entry.key, entry.value = key, value
    external = _external_files(graph)
    if not external:
        onnx.save(graph, str(path))
        return
    load_external_data_for_model(graph, str(path.parent))  # into memory; the per-weight files can go
    for name in external:
        (path.parent / name).unlink()
    onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024, convert_attribute=True)


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def write_tokens(model, path: Path) -> Path:
    """``piece id`` per line in the joint's order, then ``<blk> V`` (NeMo's RNN-T blank is the last id)."""
    spm = model.tokenizer.tokenizer
    vocab = [spm.id_to_piece(i) for i in range(spm.get_piece_size())]
    if len(vocab) != model.decoder.vocab_size:
        raise ValueError(f"tokenizer has {len(vocab)} pieces, the decoder {model.decoder.vocab_size}")
    path.write_text("".join(f"{p} {i}\n" for i, p in enumerate(vocab)) + f"<blk> {len(vocab)}\n")
    return path


def export_mode(model, mode: ChunkMode, out_dir: Path) -> dict:
    """Export one chunk mode into ``out_dir``; returns what was written and the encoder metadata."""
    from streamtune.streaming import att_context

    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    with att_context(model, mode), torch.no_grad():
        model.set_export_config({"cache_support": "True"})
        meta = _encoder_metadata(model, mode)
        model.encoder.export(str(out_dir / "encoder.onnx"), check_trace=False)
        model.decoder.export(str(out_dir / "decoder.onnx"), check_trace=False)
        model.joint.export(str(out_dir / "joiner.onnx"), check_trace=False)
    _set_metadata(out_dir / "encoder.onnx", meta)
    write_tokens(model, out_dir / "tokens.txt")
    return {"chunk_ms": mode.chunk_ms, "dir": str(out_dir), "metadata": meta,
            "files": sorted(p.name for p in out_dir.iterdir())}


def quantize_dir(src: Path, dst: Path) -> None:
    """int8 dynamic quantisation (weights int8, activations quantised on the fly) of every graph in ``src``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    dst.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser warns once per tensor whose type it cannot infer (shape ops)
    try:
        for name in ("encoder.onnx", "decoder.onnx", "joiner.onnx"):
            quantize_dynamic(str(src / name), str(dst / name), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    _set_metadata(dst / "encoder.onnx", {**read_metadata(src / "encoder.onnx"), "quantization": "int8-dynamic"})
    shutil.copyfile(src / "tokens.txt", dst / "tokens.txt")


class OrtStreamingDecoder:
    """Greedy RNN-T over the exported encoder / decoder / joiner, chunk by chunk, one stream at a time.

    ``decode(feats)`` takes export-fed features (``StreamingRunner(feeding="export").features``) and runs
    exactly the windows ``StreamingRunner(feeding="export")`` runs; ``max_symbols`` per frame as NeMo's
    greedy decoding (``decoding.greedy.max_symbols``).
    """

    def __init__(self, mode_dir: str | Path, max_symbols: int = 10, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        mode_dir = Path(mode_dir)
        self.encoder = ort.InferenceSession(str(mode_dir / "encoder.onnx"), opts, providers=["CPUExecutionProvider"])
        self.decoder = ort.InferenceSession(str(mode_dir / "decoder.onnx"), opts, providers=["CPUExecutionProvider"])
        self.joiner = ort.InferenceSession(str(mode_dir / "joiner.onnx"), opts, providers=["CPUExecutionProvider"])
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

    def decode(self, feats: np.ndarray, keep_encoded: bool = False):
        """``feats``: [F, T] float32, silence-padded. Returns (tokens, encoder output [T', D] or None)."""
        channel = np.zeros(self.cache_channel, dtype=np.float32)
        time_ = np.zeros(self.cache_time, dtype=np.float32)
        channel_len = np.zeros(1, dtype=np.int64)
        states = (np.zeros((self.pred_layers, 1, self.pred_hidden), dtype=np.float32),) * 2
        dec_out, states = self._predict(self.blank, states)  # blank as start-of-sequence (blank_as_pad)
        tokens, pieces = [], []
        total = feats.shape[1]
        start = self.pre_cache
        while start < total:
            window = feats[:, start - self.pre_cache: start + self.shift]
            outs = self.encoder.run(None, dict(zip(self._enc_in, [
                window[None].astype(np.float32), np.array([window.shape[1]], dtype=np.int64),
                channel, time_, channel_len])))
            encoded, enc_len, channel, time_, channel_len = outs
            n_frames = int(enc_len[0])
            if keep_encoded:
                pieces.append(encoded[0, :, :n_frames].T)
            for t in range(n_frames):
                frame = encoded[:, :, t: t + 1]
                for _ in range(self.max_symbols):
                    logits = self.joiner.run(None, dict(zip(self._join_in, [frame, dec_out])))[0]
                    k = int(np.argmax(logits.reshape(-1)[: self.vocab_size + 1]))
                    if k == self.blank:
                        break
                    tokens.append(k)
                    dec_out, states = self._predict(k, states)
            start += self.shift
        encoded_all = np.concatenate(pieces) if keep_encoded and pieces else None
        return tokens, encoded_all


def _wer(refs: list[str], hyps: list[str]) -> float:
    from streamtune.metrics import corpus_errors

    return corpus_errors(refs, hyps)[0].wer


def check_onnx(model, utts, modes: list[ChunkMode], onnx_root: Path, atol: float, int8: bool,
               int8_max_wer_delta: float, sherpa: bool, sherpa_max_wer_delta: float, batch_size: int = 8) -> dict:
    """Export every mode into ``onnx_root/<ms>ms`` and check it; returns the ``onnx.json`` payload.

    Per mode: ONNX Runtime fp32 tokens must equal PyTorch streaming tokens under the same (export)
    feeding and encoder outputs agree within ``atol``; int8 (optional) may raise WER by at most
    ``int8_max_wer_delta`` points; sherpa-onnx (optional) must land within ``sherpa_max_wer_delta`` points
    of our ONNX streaming WER. The agreement of export feeding with exact streaming is reported, not gated.
    """
    from streamtune.streaming import StreamingRunner

    max_symbols = int(model.cfg.decoding.get("greedy", {}).get("max_symbols", 10) or 10)
    refs = [u.text for u in utts]
    exact = StreamingRunner(model, batch_size=batch_size)
    fed = StreamingRunner(model, batch_size=batch_size, feeding="export")
    exact_feats = [exact.features(u.audio) for u in utts]
    fed_feats = [fed.features(u.audio) for u in utts]
    report = []
    for mode in modes:
        mode_dir = onnx_root / f"{mode.chunk_ms}ms"
        info = export_mode(model, mode, mode_dir)
        exact_out = exact.streaming(mode, exact_feats)
        torch_out = fed.streaming(mode, fed_feats, keep_encoded=True)
        ort_dec = OrtStreamingDecoder(mode_dir, max_symbols=max_symbols)
        ort_out = [ort_dec.decode(f.numpy(), keep_encoded=True) for f in fed_feats]
        ort_tokens = [t for t, _ in ort_out]
        diffs = [float(np.abs(e - t.numpy()).max()) if e is not None and e.shape == tuple(t.shape) else
                 (0.0 if e is None and t.numel() == 0 else float("inf")) for (_, e), t in zip(ort_out, torch_out.encoded)]
        mismatched = [u.id for u, a, b in zip(utts, ort_tokens, torch_out.tokens) if a != b]
        ort_texts = exact._texts(ort_tokens)
        entry = {
            "chunk_ms": mode.chunk_ms, "att_context": mode.att_context, "dir": f"onnx/{mode.chunk_ms}ms",
            "metadata": info["metadata"],
            "fp32": {"token_mismatched_utts": mismatched, "encoder_max_abs_diff": max(diffs, default=0.0),
                     "wer": _wer(refs, ort_texts)},
            "export_feeding_vs_exact": {
                "utts_identical": sum(a == b for a, b in zip(torch_out.tokens, exact_out.tokens)),
                "wer_exact": _wer(refs, exact_out.texts), "wer_export_feeding": _wer(refs, torch_out.texts)},
        }
        passed = not mismatched and entry["fp32"]["encoder_max_abs_diff"] <= atol
        if int8:
            q_dir = onnx_root / f"{mode.chunk_ms}ms-int8"
            quantize_dir(mode_dir, q_dir)
            q_dec = OrtStreamingDecoder(q_dir, max_symbols=max_symbols)
            q_texts = exact._texts([q_dec.decode(f.numpy())[0] for f in fed_feats])
            q_wer = _wer(refs, q_texts)
            delta = 100 * (q_wer - entry["fp32"]["wer"])
            entry["int8"] = {"dir": f"onnx/{mode.chunk_ms}ms-int8", "wer": q_wer, "wer_delta_points": delta,
                             "max_wer_delta_points": int8_max_wer_delta, "passed": delta <= int8_max_wer_delta}
            passed = passed and entry["int8"]["passed"]
        if sherpa:
            from export.sherpa import sherpa_decode

            s_texts, padding = sherpa_decode(mode_dir, [u.audio for u in utts])
            s_wer = _wer(refs, s_texts)
            agree = sum(_norm(a) == _norm(b) for a, b in zip(s_texts, ort_texts))
            delta = 100 * (s_wer - entry["fp32"]["wer"])
            entry["sherpa_onnx"] = {
                "wer": s_wer, "wer_delta_points": delta, "max_wer_delta_points": sherpa_max_wer_delta,
                "utts_agreeing_with_ours": agree, "agreement_rate": agree / len(utts), "padding": padding,
                "differences": [{"id": u.id, "ours": a, "sherpa_onnx": b}
                                for u, a, b in zip(utts, ort_texts, s_texts) if _norm(a) != _norm(b)][:20],
                "passed": abs(delta) <= sherpa_max_wer_delta}
            passed = passed and entry["sherpa_onnx"]["passed"]
        entry["passed"] = passed
        report.append(entry)
    return {"schema_version": 1, "passed": all(m["passed"] for m in report), "atol": atol, "num_utts": len(utts),
            "utt_ids": [u.id for u in utts], "modes": report}


def _norm(text: str) -> str:
    return " ".join(text.split())


def onnx_summary(payload: dict) -> str:
    lines = ["| chunk | ONNX fp32 tokens == PyTorch | encoder max abs diff | fp32 WER | int8 WER (delta) "
             "| sherpa-onnx WER (agreement) | export vs exact feeding WER |", "|---|---|---|---|---|---|---|"]
    for m in payload["modes"]:
        f = m["fp32"]
        q = m.get("int8")
        s = m.get("sherpa_onnx")
        x = m["export_feeding_vs_exact"]
        q_cell = "-" if not q else f"{100 * q['wer']:.2f} % ({q['wer_delta_points']:+.2f})"
        s_cell = "-" if not s else f"{100 * s['wer']:.2f} % ({100 * s['agreement_rate']:.0f} %)"
        lines.append(
            f"| {m['chunk_ms']} ms | {'yes' if not f['token_mismatched_utts'] else 'NO: ' + str(len(f['token_mismatched_utts']))} "
            f"| {f['encoder_max_abs_diff']:.2e} | {100 * f['wer']:.2f} % "
            f"| {q_cell} | {s_cell} "
            f"| {100 * x['wer_export_feeding']:.2f} / {100 * x['wer_exact']:.2f} % |")
    return "\n".join(lines)
