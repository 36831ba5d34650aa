"""Fine-tuning from a .nemo shaped like the target: start points, vocabulary change, adaptation modes, safety rails.

The "base" model is the target's shape in miniature (conftest.make_base): EncDecRNNTBPEModel, 128 mel features,
normalize "NA", the four-mode context list, a BPE tokenizer with capitals, punctuation and digits, the default
(numba) RNN-T loss with FastEmit. Fine-tuning runs use the real recipes under recipes/nemotron/ with CPU-sized
overrides (conftest.finetune).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from tests.helpers import DEMO_RECIPE, NEMOTRON

CONTEXTS = [[70, 13], [70, 6], [70, 1], [70, 0]]


def _state(path: Path) -> dict:
    from streamtune.model.build import load_model

    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def test_full_finetune_from_nemo(base_nemo, finetune, tmp_path, capsys):
    from streamtune.model.build import load_model

    run = finetune("full_finetune.yaml", base_nemo, tmp_path, "model.att_context_probs=[4,3,2,1]")
    console = capsys.readouterr().out
    assert "step 3 dev WER: 1120ms " in console and "80ms" in console and "mean" in console
    base, tuned = load_model(base_nemo), load_model(run / "final.nemo")
    assert type(tuned).__name__ == "EncDecRNNTBPEModel"
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert any(k.startswith("encoder.") for k in changed) and any(k.startswith("joint.") for k in changed)
    # The multi-context list and the (normalised) probabilities survive into final.nemo.
    assert [list(p) for p in tuned.cfg.encoder.att_context_size] == CONTEXTS
    assert tuned.cfg.encoder.att_context_probs == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert sum(tuned.cfg.encoder.att_context_probs) == 1.0  # what NeMo checks
    assert [list(p) for p in tuned.encoder.att_context_size_all] == CONTEXTS
    # Tokenizer unchanged: same pieces, capitals and punctuation included.
    pieces = [base.tokenizer.ids_to_tokens([i])[0] for i in range(base.tokenizer.vocab_size)]
    assert pieces == [tuned.tokenizer.ids_to_tokens([i])[0] for i in range(tuned.tokenizer.vocab_size)]
    assert any(any(c.isupper() for c in p) for p in pieces) and any(p.strip("▁") in ".?!," for p in pieces)
    # Recipe values override the .nemo's, and the merge is written down.
    assert tuned.cfg.spec_augment.freq_masks == 2 and tuned.spec_augmentation is not None
    assert tuned.cfg.optim.sched.name == "CosineAnnealing" and "d_model" not in tuned.cfg.optim.sched
    setup = (run / "model_setup.txt").read_text()
    assert "model.optim.lr" in setup and "model.spec_augment.freq_masks: 0 -> 2" in setup
    assert "model.encoder.att_context_probs: None -> [0.4" in setup
    rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
    assert any(r.get("val_wer_80ms") for r in rows) and any(r.get("lr-AdamW") for r in rows)


def test_new_tokenizer_changes_vocabulary_and_keeps_fastemit(base_nemo, lower_tokenizer, finetune,
                                                             finetune_overrides, tmp_path):
    from nemo.collections.asr.models import ASRModel

    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model, load_model

    # NeMo's own change_vocabulary resets FastEmit (and the loss type) to defaults: what we guard against.
    plain = ASRModel.restore_from(str(base_nemo), map_location="cpu")
    assert plain.loss._loss.fastemit_lambda == 0.001
    before = plain.tokenizer.vocab_size
    plain.change_vocabulary(new_tokenizer_dir=str(lower_tokenizer), new_tokenizer_type="bpe")
    assert plain.loss._loss.fastemit_lambda == 0.0

    overrides = [f"model.init_from={base_nemo}", f"model.tokenizer_dir={lower_tokenizer}", *finetune_overrides,
                 f"run.output_dir={tmp_path}"]
    overrides.remove("+model.loss.loss_name=pytorch")
    model = build_model(load_config(NEMOTRON / "new_vocabulary.yaml", overrides), log=lambda _: None)
    assert model.tokenizer.vocab_size == 48 and model.joint.num_classes_with_blank == 49
    assert type(model.loss._loss).__name__ == "RNNTLossNumba" and model.loss._loss.fastemit_lambda == 0.005

    run = finetune("new_vocabulary.yaml", base_nemo, tmp_path / "run", f"model.tokenizer_dir={lower_tokenizer}",
                   "trainer.max_steps=2", "data.allow_style_change=true")
    tuned = load_model(run / "final.nemo")
    assert tuned.tokenizer.vocab_size == 48
    assert tuned.cfg.loss.warprnnt_numba_kwargs.fastemit_lambda == 0.005
    assert f"vocabulary {before} -> 48 tokens" in (run / "model_setup.txt").read_text()


def test_hybrid_and_checkpoint_start_points(make_base, finetune, trained_run, tmp_path):
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes

    hybrid = make_base(tmp_path / "hybrid.nemo", target="nemo.collections.asr.models.EncDecHybridRNNTCTCBPEModel")
    run = finetune("full_finetune.yaml", hybrid, tmp_path / "h", "trainer.max_steps=2")
    tuned = load_model(run / "final.nemo")
    assert type(tuned).__name__ == "EncDecHybridRNNTCTCBPEModel" and len(chunk_modes(tuned)) == 4
    # A Lightning checkpoint of one of our runs is a start point too (fresh optimiser, its weights).
    run = finetune("full_finetune.yaml", trained_run / "checkpoints" / "last.ckpt", tmp_path / "c",
                   "trainer.max_steps=2")
    assert (run / "final.nemo").exists() and "init_from" in (run / "model_setup.txt").read_text()


def test_frozen_encoder_is_bitwise_unchanged(base_nemo, finetune, tmp_path):
    run = finetune("frozen_encoder.yaml", base_nemo, tmp_path)
    before, after = _state(base_nemo), _state(run / "final.nemo")
    enc = [k for k in before if k.startswith("encoder.")]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(("decoder.", "joint.")))


def test_adapters_train_alone_and_stream_like_offline(base_nemo, finetune, corpus, tmp_path):
    from streamtune.data.reading import load_utterances
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.runner import StreamingRunner

    run = finetune("adapters.yaml", base_nemo, tmp_path, "finetune.adapter_dim=8")
    before, after = _state(base_nemo), _state(run / "final.nemo")
    assert all(torch.equal(before[k], after[k]) for k in before), "every released weight untouched"
    added = [k for k in after if k not in before]
    assert added and all("adapter_layer.streamtune" in k for k in added)
    # LinearAdapter starts as the identity (last layer zero): it trained iff that layer moved.
    assert any(after[k].abs().sum() > 0 for k in added if k.endswith("module.3.weight"))
    # Adapters act per frame: chunk-by-chunk streaming still equals offline in every mode.
    model = load_model(run / "final.nemo")
    runner = StreamingRunner(model, batch_size=3)
    feats = [runner.features(u.audio) for u in load_utterances(corpus / "cuts_dev.jsonl.gz")]
    for mode in chunk_modes(model):
        off, st = runner.offline(mode, feats, keep_encoded=True), runner.streaming(mode, feats, keep_encoded=True)
        assert max(float((a - b).abs().max()) for a, b in zip(off.encoded, st.encoded)) < 1e-4, mode


def test_per_module_learning_rate(base_nemo, finetune, tmp_path):
    """NeMo's optim_param_groups: an encoder learning rate of 0 leaves it unchanged while the rest trains."""
    run = finetune("discriminative_lr.yaml", base_nemo, tmp_path, "model.optim_param_groups.encoder.lr=0.0",
                   "model.optim.sched.min_lr=0.0")
    before, after = _state(base_nemo), _state(run / "final.nemo")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def test_finetune_config_errors_are_clear(base_nemo, finetune_overrides, tmp_path, capsys):
    from streamtune.stages import train

    cases = {
        "+model.optim_param_groups.encodr.lr=1e-5": "the model has no module 'encodr'",
        "+model.encoder.att_context_sise=[[70,0]]": "does not have. Did you mean model.encoder.att_context_size",
        "model.init_from=/nowhere/base.nemo": "'/nowhere/base.nemo' does not exist",
        "finetune.mode=adapter": "finetune.mode must be one of full, frozen_encoder, adapters",
        "+model.encoder.d_model=48": "changes the architecture",
    }
    for override, message in cases.items():
        args = ["--config", str(NEMOTRON / "discriminative_lr.yaml"), f"model.init_from={base_nemo}",
                *finetune_overrides, f"run.output_dir={tmp_path / 'err'}", override]
        assert train.main(args) == 2, override
        assert message in capsys.readouterr().err, override
    assert train.main(["--config", str(NEMOTRON / "full_finetune.yaml")]) == 2
    err = capsys.readouterr().err
    assert "required config key(s) not set" in err and "data.train" in err and "model.init_from" in err, err


def test_nonfinite_steps_are_skipped_and_counted(corpus, train_tiny, tmp_path):
    """One utterance of NaN samples makes one batch's loss NaN: the update is dropped, counted, training goes on."""
    import numpy as np
    import soundfile as sf
    from lhotse import CutSet, MonoCut, Recording

    cuts = CutSet.from_file(corpus / "cuts_train.jsonl.gz").to_eager()
    bad = cuts[0]
    audio = np.full(int(bad.duration * 16000), np.nan, dtype=np.float32)
    sf.write(tmp_path / "nan.wav", audio, 16000, subtype="FLOAT")
    rec = Recording.from_file(tmp_path / "nan.wav", recording_id=bad.recording_id)
    nan_cut = MonoCut(id=bad.id, start=0, duration=bad.duration, channel=0, supervisions=bad.supervisions,
                      recording=rec)
    cuts = CutSet.from_cuts([nan_cut, *list(cuts)[1:]])
    cuts.to_file(tmp_path / "cuts_nan.jsonl.gz")
    results = {}
    for guard in ("true", "false"):
        run = train_tiny(tmp_path / guard, f"data.train={tmp_path / 'cuts_nan.jsonl.gz'}", "trainer.max_steps=4",
                         "data.dev=null", f"trainer.skip_nonfinite_steps={guard}")
        rows = list(csv.DictReader(open(run / "logs" / "metrics.csv")))
        skipped = [float(r["train_skipped_steps"]) for r in rows if r.get("train_skipped_steps")]
        results[guard] = (skipped, _state(run / "final.nemo"))
    skipped, weights = results["true"]
    assert skipped[-1] == 1.0 and len(skipped) == 4, "counted every step; the NaN batch skipped once"
    assert all(torch.isfinite(v).all() for v in weights.values())
    skipped, weights = results["false"]
    assert not skipped and any(not torch.isfinite(v).all() for v in weights.values()), "without the guard: NaN weights"


def test_bucketing_uses_lhotse_dynamic_bucketing(tiny_overrides):
    from lhotse.dataset import DynamicBucketingSampler

    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model
    from streamtune.training.resume import lhotse_sampler

    # 3 buckets of two 10 s batches each fit the corpus' ~100 s (fewer would be used for less data).
    model = build_model(load_config(DEMO_RECIPE, [*tiny_overrides, "data.num_buckets=3", "data.batch_duration_s=10"]),
                        log=lambda _: None)
    sampler = lhotse_sampler(model.train_dataloader())
    assert isinstance(sampler, DynamicBucketingSampler) and sampler.num_buckets == 3
    assert all(len(batch) > 0 for batch, _ in zip(sampler, range(3)))


def test_recipes_open_with_purpose_and_command():
    for recipe in sorted(NEMOTRON.glob("*.yaml")):
        head = recipe.read_text().split("\n\n")[0]
        assert head.startswith("# ") and f"python train.py --config recipes/nemotron/{recipe.name}" in head, recipe


def test_context_probs_sum_to_exactly_one_as_nemo_checks():
    """NeMo rejects att_context_probs unless the *plain* float sum is exactly 1; [4,3,2,1]/10 alone is not."""
    import random

    from streamtune.model.nemo_config import normalise_probs

    assert sum(w / 10 for w in [4, 3, 2, 1]) != 1.0
    rng = random.Random(0)
    for weights in [[4, 3, 2, 1], [1, 1, 1], *([rng.random() for _ in range(rng.randint(1, 6))] for _ in range(2000))]:
        probs = normalise_probs(weights, len(weights))
        assert sum(probs) == 1.0 and probs == pytest.approx([w / sum(weights) for w in weights])
