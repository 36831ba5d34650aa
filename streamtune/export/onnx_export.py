"""ONNX per chunk mode, in the layout sherpa-onnx's NeMo streaming transducer loader reads.

Layout: ``onnx/<ms>ms/{encoder.onnx, decoder.onnx, joiner.onnx, tokens.txt, bpe.vocab}`` (``bpe.vocab``: the
SentencePiece pieces and scores, which sherpa-onnx needs for hotwords with a BPE model). The encoder is exported
with ``cache_support`` after ``set_default_att_context_size`` (the attention mask is baked in: one encoder
per chunk mode); decoder and joiner are the same in every mode and copied beside each encoder, so each
directory is a complete model for sherpa-onnx. The encoder carries the metadata sherpa-onnx reads
(``vocab_size`` without blank, ``window_size`` = pre-encode cache + chunk in mel frames, ``chunk_shift``
= chunk, cache dimensions, ``pred_rnn_layers``, ``pred_hidden``, ``subsampling_factor``,
``normalize_type``) plus ours (``chunk_ms``, ``att_context``). ``onnx_decoder`` runs these files;
``onnx_check`` compares them with PyTorch.
"""


from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from streamtune.model.chunks import ChunkMode, att_context
from streamtune.model.tokenizers import piece_scores


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
        "feat_dim": int(enc._feat_in),  # NeMo 3.0.0: ConformerEncoder keeps its feat_in only as this private
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
    # onnx 1.23.2: the private helper its own load/convert_model_to_external_data walk the tensors with; no public
    # function lists those inside node attributes as well as the initializers.
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
    (out_dir / "bpe.vocab").write_text(piece_scores(model))  # sherpa-onnx's bpe_vocab, for hotwords
    return {"chunk_ms": mode.chunk_ms, "dir": str(out_dir), "metadata": meta,
            "files": sorted(p.name for p in out_dir.iterdir())}


# int8 variants `export onnx` tries (export.int8_variants); each is measured and the best kept (onnx_check):
#   dynamic                        every graph, weights int8 per tensor, activations quantised on the fly
#   dynamic-per-channel            the same, one scale per output channel
#   encoder-dynamic-per-channel    only the encoder (decoder and joiner, small and run per token, stay fp32)
#   encoder-matmul-per-channel     only the encoder's MatMuls (convolutions and the subsampling stay fp32)
#   encoder-static                 the encoder with static int8 (QDQ) scales calibrated on the parity set's
#                                  streaming inputs; decoder and joiner fp32
INT8_VARIANTS = ("dynamic", "dynamic-per-channel", "encoder-dynamic-per-channel", "encoder-matmul-per-channel",
                 "encoder-static")


def quantize_dir(src: Path, dst: Path, variant: str = "dynamic", calibration: list[dict] | None = None) -> None:
    """int8 copy of the graphs in ``src`` (one of ``INT8_VARIANTS``) into ``dst``."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    if variant not in INT8_VARIANTS:
        raise ValueError(f"unknown int8 variant {variant!r}; choose from {INT8_VARIANTS}")
    dst.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser warns once per tensor whose type it cannot infer (shape ops)
    per_channel = variant.endswith("per-channel")
    graphs = ("encoder.onnx",) if variant.startswith("encoder-") else ("encoder.onnx", "decoder.onnx", "joiner.onnx")
    try:
        for name in ("encoder.onnx", "decoder.onnx", "joiner.onnx"):
            if name not in graphs:
                shutil.copyfile(src / name, dst / name)
            elif variant == "encoder-static":
                _quantize_static(src / name, dst / name, calibration or [])
            else:
                ops = ["MatMul"] if variant == "encoder-matmul-per-channel" else None
                quantize_dynamic(str(src / name), str(dst / name), weight_type=QuantType.QInt8,
                                 per_channel=per_channel, op_types_to_quantize=ops)
    finally:
        root.setLevel(level)
    _set_metadata(dst / "encoder.onnx", {**read_metadata(src / "encoder.onnx"), "quantization": f"int8-{variant}"})
    for name in ("tokens.txt", "bpe.vocab"):
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)


def _quantize_static(src: Path, dst: Path, calibration: list[dict]) -> None:
    """Static int8 (QDQ, per channel) of the encoder, activation ranges from ``calibration`` (encoder input dicts
    recorded while streaming the parity set)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    if not calibration:
        raise ValueError("encoder-static needs calibration inputs")

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True})
