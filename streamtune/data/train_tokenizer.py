"""Train a SentencePiece tokenizer from cuts' transcripts into a NeMo tokenizer dir."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from streamtune.data.stamp import Stamp
from streamtune.errors import UserError


def read_texts(cuts_path: str | Path) -> list[str]:
    from lhotse import CutSet

    if not Path(cuts_path).exists():
        raise UserError(f"cuts file '{cuts_path}' does not exist; create it with `python -m data_prep ...`")
    texts = [s.text for cut in CutSet.from_file(cuts_path) for s in cut.supervisions if s.text and s.text.strip()]
    if not texts:
        raise UserError(f"cuts file '{cuts_path}' has no transcripts to train a tokenizer on")
    return texts


def train_tokenizer(cuts_paths: list[str | Path], out_dir: str | Path, vocab_size: int = 128,
                    tokenizer_type: str = "bpe", force: bool = False) -> Path:
    """Write ``tokenizer.model``, ``tokenizer.vocab`` and ``vocab.txt`` (what NeMo's ``tokenizer.dir`` expects).

    Uses NeMo's own ``create_spt_model`` (what NeMo's tokenizer script calls), so
    the result loads exactly as NeMo tokenizers do. Case and punctuation are kept.
    """
    out_dir = Path(out_dir)
    texts = [t for p in cuts_paths for t in read_texts(p)]
    # Retrain whenever the transcripts or settings change; reuse otherwise.
    key = hashlib.sha256(repr((vocab_size, tokenizer_type, texts)).encode()).hexdigest()
    stamp = Stamp(out_dir, "tokenizer")
    if not force and stamp.up_to_date(key, [out_dir / "tokenizer.model"]):
        print(f"tokenizer in {out_dir} is up to date (use --force to retrain)")
        return out_dir
    stamp.start()
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        text_file = Path(tmp) / "text.txt"
        text_file.write_text("\n".join(texts) + "\n")
        try:
            create_spt_model(
                str(text_file), vocab_size, sample_size=-1, do_lower_case=False,
                tokenizer_type=tokenizer_type, output_dir=str(out_dir),
            )
        except RuntimeError as err:
            raise UserError(f"SentencePiece could not build a {vocab_size}-token vocabulary: {err}. "
                            "Lower --vocab-size.") from None
    stamp.done(key)
    print(f"tokenizer ({vocab_size} pieces, {tokenizer_type}) written to {out_dir}")
    return out_dir
