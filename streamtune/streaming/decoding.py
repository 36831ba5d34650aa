"""How tokens are searched: NeMo's own RNN-T decoders, configured from ``eval.decoding`` / ``eval.boost_words``.

* ``greedy``: NeMo's ``greedy_batch`` (label looping). It carries its hypotheses (decoder state, boosting state,
  confidence) from chunk to chunk, so it serves true chunk-by-chunk streaming.
* ``beam``: NeMo's ``malsd_batch`` beam search with ``beam_size``. NeMo 3.0's beam searches cannot continue a
  hypothesis into the next chunk (``malsd_batch`` refuses partial hypotheses; the per-utterance ``beam`` restarts
  from one path), so when streaming, the encoder still runs chunk by chunk with its caches and the beam search
  runs once over the streamed encoder output when the utterance ends: the final result is the beam's, partial
  results are not produced, and every token is reported at the end of the utterance.
* ``boost_words``: NeMo's GPU phrase boosting (a boosting tree over the tokenizer's pieces), with greedy and beam
  alike; phrases are matched as written (the tokenizer's case).

Token confidence (NeMo's entropy-based measure) comes with greedy decoding; a word's confidence is that of its least
confident token (``streamtune.streaming.words.word_timings``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from omegaconf import open_dict

from streamtune.errors import UserError

KINDS = ("greedy", "beam")


@dataclass(frozen=True)
class Decoding:
    kind: str = "greedy"
    beam_size: int = 4
    boost: tuple[str, ...] = ()
    boost_alpha: float = 1.0  # NeMo's boosting_tree_alpha: weight of the boosting score in the search
    boost_score: float = 1.0  # NeMo's context_score: the bonus per matched piece

    @property
    def label(self) -> str:
        name = "greedy" if self.kind == "greedy" else f"beam{self.beam_size}"
        return name + (f"+boost{len(self.boost)}" if self.boost else "")

    @property
    def carries_hypotheses(self) -> bool:
        """Whether the search continues hypotheses across streaming chunks (partial results per chunk)."""
        return self.kind == "greedy"


def boost_phrases(spec, key: str = "eval.boost_words") -> tuple[str, ...]:
    """``eval.boost_words`` (or ``export.hotwords``): a list of words/phrases, or a file with one per line."""
    if spec is None:
        return ()
    if isinstance(spec, str):
        path = Path(spec)
        if not path.is_file():
            raise UserError(f"{key} '{spec}' is not a file; give a file with one word or phrase per "
                            f"line, or a list: {key}='[word, another phrase]'")
        phrases = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    else:
        phrases = [str(p).strip() for p in spec]
    phrases = tuple(dict.fromkeys(p for p in phrases if p and not p.startswith("#")))
    if not phrases:
        raise UserError(f"{key} {spec!r} names no word or phrase")
    return phrases


def decoding_from_config(eval_cfg) -> Decoding:
    kind = str(eval_cfg.decoding)
    if kind not in KINDS:
        raise UserError(f"eval.decoding must be one of {', '.join(KINDS)}, not '{kind}'")
    if int(eval_cfg.beam_size) < 1:
        raise UserError(f"eval.beam_size must be >= 1 (got {eval_cfg.beam_size})")
    return Decoding(kind, int(eval_cfg.beam_size), boost_phrases(eval_cfg.boost_words), float(eval_cfg.boost_alpha),
                    float(eval_cfg.boost_score))


def apply_decoding(model, decoding: Decoding) -> None:
    """Switch ``model``'s RNN-T decoding to ``decoding`` (NeMo's ``change_decoding_strategy``)."""
    import torch

    cfg = copy.deepcopy(model.cfg.decoding)
    boosting = {"key_phrases_list": list(decoding.boost), "context_score": decoding.boost_score,
                "use_triton": torch.cuda.is_available()} if decoding.boost else None
    with open_dict(cfg):
        cfg.fused_batch_size = -1
        cfg.compute_timestamps = False  # per-token frames come with every hypothesis; NeMo's word timestamps
        # replace hyp.timestamp in place, which breaks continuing the hypothesis into the next chunk
        if decoding.kind == "greedy":
            cfg.strategy = "greedy_batch"
            cfg.greedy = cfg.get("greedy") or {}
            cfg.greedy.max_symbols = cfg.greedy.get("max_symbols", 10)
            cfg.greedy.loop_labels = True
            cfg.greedy.use_cuda_graph_decoder = False
            if boosting:
                cfg.greedy.boosting_tree = boosting
                cfg.greedy.boosting_tree_alpha = decoding.boost_alpha
            # Token confidence only: NeMo's word aggregation splits words its own way and raises when its split
            # and the text's disagree (a lone "▁" piece before punctuation: "wait or[.]"), losing the whole
            # batch. streamtune.streaming.words.word_timings groups the tokens into words itself.
            cfg.confidence_cfg = {"preserve_frame_confidence": True, "preserve_token_confidence": True,
                                  "preserve_word_confidence": False, "exclude_blank": True, "aggregation": "min",
                                  "method_cfg": {"name": "entropy", "entropy_type": "tsallis", "alpha": 0.5,
                                                 "entropy_norm": "exp"}}
        else:
            cfg.strategy = "malsd_batch"
            cfg.beam = cfg.get("beam") or {}
            cfg.beam.beam_size = decoding.beam_size
            cfg.beam.return_best_hypothesis = True
            cfg.beam.allow_cuda_graphs = False
            if boosting:
                cfg.beam.boosting_tree = boosting
                cfg.beam.boosting_tree_alpha = decoding.boost_alpha
            cfg.confidence_cfg = {"preserve_frame_confidence": False, "preserve_token_confidence": False,
                                  "preserve_word_confidence": False}
    kwargs = {"decoder_type": "rnnt"} if hasattr(model, "cur_decoder") else {}
    try:
        model.change_decoding_strategy(cfg, verbose=False, **kwargs)
    except Exception as err:  # noqa: BLE001 - NeMo raises many kinds for a decoding it cannot build
        raise UserError(f"NeMo cannot decode this model with {decoding.label}: {type(err).__name__}: {err}") from None
