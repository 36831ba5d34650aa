"""A model's SentencePiece tokenizer written out as files: a NeMo tokenizer dir, sherpa-onnx's ``bpe.vocab``."""

from __future__ import annotations

from pathlib import Path


def save_tokenizer(model, out_dir: str | Path, scores_name: str = "tokenizer.vocab") -> list[Path]:
    """The model's own SentencePiece tokenizer as a NeMo tokenizer dir: ``tokenizer.model``, ``vocab.txt`` (the
    pieces) and ``piece<TAB>score`` lines (SentencePiece's ``.vocab``; sherpa-onnx's ``bpe.vocab``).

    (NeMo's ``save_tokenizers`` copies every path of the tokenizer config, and fails on a restored model whose
    config names the tokenizer's directory.)"""
    return write_tokenizer_dir(model.tokenizer.tokenizer, out_dir, scores_name)


def write_tokenizer_dir(spm, out_dir: str | Path, scores_name: str = "tokenizer.vocab") -> list[Path]:
    """A ``SentencePieceProcessor`` as a NeMo tokenizer dir (see :func:`save_tokenizer`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.model").write_bytes(spm.serialized_model_proto())
    (out_dir / "vocab.txt").write_text("".join(f"{spm.id_to_piece(i)}\n" for i in range(spm.get_piece_size())))
    (out_dir / scores_name).write_text(_scores(spm))
    return [out_dir / "tokenizer.model", out_dir / "vocab.txt", out_dir / scores_name]


def piece_scores(model) -> str:
    """``piece<TAB>score`` per line in id order: SentencePiece's ``.vocab`` format (sherpa-onnx's ``bpe_vocab``)."""
    return _scores(model.tokenizer.tokenizer)


def _scores(spm) -> str:
    return "".join(f"{spm.id_to_piece(i)}\t{spm.get_score(i)}\n" for i in range(spm.get_piece_size()))
