"""Appending tokens to a trained model's vocabulary while it keeps everything it learnt (``model.add_tokens``).

NeMo's ``change_vocabulary`` (and our ``model.tokenizer_dir``) builds a new prediction net and joint: the model
forgets how to write. Appending is different: the SentencePiece model gets the new pieces at the end (as
user-defined pieces, matched whole in transcripts: ``"Yes.<EOU>"`` -> ``... ▁Yes . <EOU>``), every existing piece
keeps its id, and the prediction net's embedding, the joint's output layer and a hybrid model's CTC output layer
keep every trained row; NeMo puts the blank after the pieces, so it moves up by the number of new tokens. The new
output rows start with zero weights and a bias of :data:`NEW_ROW_BIAS`, so before any training step the model's
outputs are unchanged: the new tokens' logits sit far below every frame's best, their probabilities underflow to
exactly 0 in float32, and the search writes the base model's tokens (tests/test_turns.py checks it in every mode,
streaming and offline). New embedding rows start at zero (they are read only after a new token was written).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile

import torch

from streamtune.errors import UserError

# The new output rows' bias: far enough below any frame's best logit that exp() of the difference underflows in
# float32 (unchanged outputs), near enough that fine-tuning lifts it in a few hundred steps (a bias of -1000, as in
# NeMo's EOU recipe, is a step of ~lr per update for Adam: thousands of steps before the token can appear).
NEW_ROW_BIAS = -40.0


def _check(spm, tokens: list[str]) -> None:
    if len(set(tokens)) != len(tokens):
        raise UserError(f"model.add_tokens {tokens} names a token twice")
    for token in tokens:
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise UserError(f"model.add_tokens: {token!r} is not a token (a non-empty string without spaces)")
        idx = spm.piece_to_id(token)
        if idx != spm.unk_id() and spm.id_to_piece(idx) == token:
            raise UserError(f"model.add_tokens: '{token}' is already in the tokenizer (id {idx}); nothing to add")
        pieces = spm.encode(token, out_type=str)
        if spm.unk_id() not in spm.encode(token) and spm.decode(pieces) == token:
            raise UserError(f"model.add_tokens: the tokenizer writes '{token}' already, as {pieces}; a second "
                            "spelling of the same text would split what the model learnt between two. Append only "
                            "symbols it cannot write (e.g. <EOU>)")


def extended_processor(spm, tokens: list[str]):
    """A copy of ``spm`` with ``tokens`` appended as user-defined pieces."""
    import sentencepiece as sp
    from sentencepiece import sentencepiece_model_pb2 as pb

    _check(spm, tokens)
    proto = pb.ModelProto()
    proto.ParseFromString(spm.serialized_model_proto())
    for token in tokens:
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, 0.0, pb.ModelProto.SentencePiece.USER_DEFINED
    return sp.SentencePieceProcessor(model_proto=proto.SerializeToString())


def _grow(old: torch.Tensor, new: torch.Tensor, vocab: int, added: int, output_bias: bool) -> torch.Tensor:
    """``old`` (first dim: ``vocab`` pieces + blank) laid into ``new``'s shape: pieces keep their rows, the blank's
    row moves up by ``added``, the new rows are zero (an output layer's bias: NEW_ROW_BIAS)."""
    out = torch.zeros_like(new)
    out[:vocab] = old[:vocab]
    out[vocab + added:] = old[vocab:]
    if output_bias:
        out[vocab:vocab + added] = NEW_ROW_BIAS
    return out


def add_tokens(model, tokens: list[str]) -> str:
    """Append ``tokens`` to the model's SentencePiece vocabulary, keeping every trained row (see the module doc);
    returns the line for model_setup.txt."""
    from streamtune.model.start_points import rebuild_loss
    from streamtune.model.tokenizers import write_tokenizer_dir

    spm = getattr(model.tokenizer, "tokenizer", None)
    if spm is None or not hasattr(spm, "serialized_model_proto"):
        raise UserError("model.add_tokens needs a SentencePiece (bpe) tokenizer")
    tokens = [str(t) for t in tokens]
    extended = extended_processor(spm, tokens)
    vocab, added = spm.get_piece_size(), len(tokens)
    modules = [name for name in ("decoder", "joint", "ctc_decoder") if getattr(model, name, None) is not None]
    before = {name: {k: v.detach().clone() for k, v in getattr(model, name).state_dict().items()} for name in modules}
    tok_dir = tempfile.mkdtemp(prefix="streamtune-tokenizer-")  # on disk for as long as the model may be saved
    atexit.register(shutil.rmtree, tok_dir, ignore_errors=True)
    write_tokenizer_dir(extended, tok_dir)
    model.change_vocabulary(new_tokenizer_dir=tok_dir, new_tokenizer_type="bpe")
    rebuild_loss(model)  # change_vocabulary resets the loss (FastEmit, loss type) to defaults
    grown = []
    for name in modules:
        module = getattr(model, name)
        fresh = module.state_dict()
        state = {}
        for key, old in before[name].items():
            new = fresh[key]
            if new.shape == old.shape:
                state[key] = old
            elif new.shape[0] == old.shape[0] + added and old.shape[0] == vocab + 1 and new.shape[1:] == old.shape[1:]:
                state[key] = _grow(old, new, vocab, added, output_bias=old.dim() == 1 and name != "decoder")
                grown.append(f"{name}.{key}")
            else:
                raise UserError(f"model.add_tokens: {name}.{key} changed from {tuple(old.shape)} to "
                                f"{tuple(new.shape)}, which appending {added} token(s) does not explain")
        module.load_state_dict(state, strict=True)
    return (f"model.add_tokens {tokens}: vocabulary {vocab} -> {vocab + added} pieces (ids "
            f"{', '.join(f'{t}={vocab + k}' for k, t in enumerate(tokens))}; the blank moves to {vocab + added}); "
            f"every trained row kept in {', '.join(grown)}; the new output rows start at bias {NEW_ROW_BIAS:g} "
            "(the model's outputs are unchanged before training)")
