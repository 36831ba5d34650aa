"""train.py end to end on tiny models: the run dir has what it promises (checkpoints, EMA weights, metrics, W&B offline,
TensorBoard), .nemo round-trips, runs are reproducible from the seed, bad configs fail before a run dir exists."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from tests.helpers import DEMO_RECIPE, SECRET, read_offline_history, seeded, value_of


def _rows(run_dir) -> list[dict]:
    return list(csv.DictReader(open(run_dir / "logs" / "metrics.csv")))


def test_run_dir_contents(trained_run):
    assert (trained_run / "config.yaml").exists()
    cfg = OmegaConf.load(trained_run / "config.yaml")
    assert cfg.trainer.max_steps == 6 and cfg.run.seed == seeded(1234)
    env = json.loads((trained_run / "env.json").read_text())
    assert env["packages"]["nemo_toolkit"] and env["packages"]["torch"] and "sha" in env["git"]
    assert (trained_run / "checkpoints" / "last.ckpt").exists()
    assert (trained_run / "final.nemo").stat().st_size > 0
    rows = _rows(trained_run)
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    assert losses and all(math.isfinite(x) for x in losses)  # logged, not NaN or inf
    assert any(r.get("val_wer") for r in rows), "validation ran"
    for key in ("val_wer_1120ms", "val_wer_560ms", "val_wer_160ms", "val_wer_80ms", "val_wer_mean"):
        assert any(r.get(key) for r in rows), f"{key} logged at validation"
    assert list((trained_run / "checkpoints").glob("step*-val_wer_mean*.ckpt")), "best-by-mean-WER checkpoints"
    assert any(r.get("train_audio_s_per_s") for r in rows), "throughput logged"
    pads = [float(r["train_pad_ratio"]) for r in rows if r.get("train_pad_ratio")]
    audio = [float(r["train_audio_s"]) for r in rows if r.get("train_audio_s")]
    assert pads and audio and all(p >= 0 for p in pads) and all(0 < a <= 20 for a in audio), "batches of <= 20 s"
    assert trained_run.parent.joinpath("latest").resolve() == trained_run


def test_our_decode_of_the_default_mode_is_nemos_own_transcribe(words_model, words_overrides):
    """What the per-mode validation (and evaluate.py offline) decodes at the default chunk mode is what NeMo's own
    ``transcribe`` gives the same audio, token for token: our features, batching and search are NeMo's."""
    from streamtune.data.reading import load_utterances
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.runner import StreamingRunner

    utts = load_utterances(value_of(words_overrides, "data.dev"))
    runner = StreamingRunner(words_model, batch_size=4)
    ours = runner.offline(chunk_modes(words_model)[0], [runner.features(u.audio) for u in utts]).tokens
    hyps = words_model.transcribe([u.audio for u in utts], batch_size=4, return_hypotheses=True, verbose=False)
    theirs = [[int(t) for t in h.y_sequence] for h in (hyps[0] if isinstance(hyps, tuple) else hyps)]
    assert sum(map(len, ours)) > 0 and ours == theirs


def test_ema_weights_are_validated_and_saved_in_final_nemo(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from streamtune.model.build import load_model
    from streamtune.model.checkpoints import load_checkpoint

    ckpt = load_checkpoint(trained_run / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 6
    average = ckpt["callbacks"]["EMA"]["average"]
    final = load_model(trained_run / "final.nemo").state_dict()
    assert average and all(torch.equal(final[k], v) for k, v in average.items()), "final.nemo holds the EMA"
    assert any(not torch.equal(ckpt["state_dict"][k], v) for k, v in average.items()), "EMA differs from raw"
    rows = _rows(trained_run)
    assert any(r.get("val_wer_mean") for r in rows) and any(r.get("val_wer_mean_raw") for r in rows)
    events = EventAccumulator(str(trained_run / "tensorboard"))
    events.Reload()
    assert {"val_wer_mean", "val_wer_mean_raw", "train_loss"} <= set(events.Tags()["scalars"])


def test_wandb_offline_run_is_written(trained_run):
    """W&B's real client in offline mode: no network needed, run files land in the run dir, the same values as the
    CSV log."""
    runs = list((trained_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb")), "an offline W&B run with its data file"
    history = read_offline_history(next(runs[0].glob("*.wandb")))
    logged = {key for row in history for key in row}
    for key in ("train_loss", "val_wer_1120ms", "val_wer_560ms", "val_wer_160ms", "val_wer_80ms", "val_wer_mean"):
        assert key in logged, f"{key} is in the W&B run"
    from_csv = [float(r["val_wer_80ms"]) for r in _rows(trained_run) if r.get("val_wer_80ms")]
    from_wandb = [row["val_wer_80ms"] for row in history if "val_wer_80ms" in row]
    assert from_wandb and from_wandb == pytest.approx(from_csv)


def test_secrets_stay_interpolations_in_written_configs(trained_run):
    """The run's config held export.hotwords=${oc.env:STREAMTUNE_TEST_SECRET}: no file it wrote holds the value."""
    written = [p for p in trained_run.rglob("*") if p.is_file() and p.suffix in (".yaml", ".json", ".wandb", ".txt")]
    assert "${oc.env:STREAMTUNE_TEST_SECRET}" in (trained_run / "config.yaml").read_text()
    leaked = [p for p in written if SECRET.encode() in p.read_bytes()]
    assert not leaked, f"the secret was written to {leaked}"


def test_nemo_round_trip_keeps_weights_config_and_modes(trained_model, tmp_path):
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes

    assert type(trained_model).__name__ == "EncDecHybridRNNTCTCBPEModel"  # the demo recipe's class
    assert [m.chunk_ms for m in chunk_modes(trained_model)] == [1120, 560, 160, 80]
    assert trained_model.cfg.preprocessor.normalize == "NA"
    again = tmp_path / "again.nemo"
    trained_model.save_to(str(again))
    reloaded = load_model(again)
    a, b = trained_model.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert OmegaConf.to_container(reloaded.cfg.encoder) == OmegaConf.to_container(trained_model.cfg.encoder)
    assert reloaded.tokenizer.vocab_size == trained_model.tokenizer.vocab_size
    signal = torch.randn(2, 16000)
    lengths = torch.tensor([16000, 12000])
    with torch.no_grad():
        out_a = trained_model(input_signal=signal, input_signal_length=lengths)[0]
        out_b = reloaded(input_signal=signal, input_signal_length=lengths)[0]
    assert torch.equal(out_a, out_b)


def test_training_is_reproducible_from_the_seed(trained_run, train_tiny, tmp_path):
    """A second run with the same seed logs the same losses (run.seed honoured everywhere; EMA, W&B and
    TensorBoard draw nothing from it)."""
    run = train_tiny(tmp_path, "trainer.max_steps=3")
    first = [r["train_loss"] for r in _rows(trained_run) if r.get("train_loss")]
    second = [r["train_loss"] for r in _rows(run) if r.get("train_loss")]
    assert len(second) == 3 and second == first[:3]


def test_train_reads_shards_and_weighted_mixes(train_tiny, corpus, tmp_path):
    """data.train may be a Shar dir (here prepared in place from NeMo tarred shards), validated NeMo manifests of
    the same tars (--keep-tars), a NeMo tarred dataset read as it is, a cuts file, or a weighted list of them: one
    run reads a mix of all four."""
    import json
    import tarfile

    from lhotse import CutSet

    from streamtune.stages.data_prep.__main__ import main as data_prep

    cuts = list(CutSet.from_file(corpus / "cuts_train.jsonl.gz"))
    tarred = tmp_path / "tarred"
    tarred.mkdir()
    for shard in range(3):
        chunk = cuts[16 * shard: 16 * (shard + 1)]
        with tarfile.open(tarred / f"audio_{shard}.tar", "w") as tar:
            for cut in chunk:
                tar.add(cut.recording.sources[0].source, arcname=f"{cut.id}.wav")
        (tarred / f"manifest_{shard}.json").write_text("".join(json.dumps(
            {"audio_filepath": f"{cut.id}.wav", "duration": cut.duration, "text": cut.supervisions[0].text,
             "shard_id": shard}) + "\n" for cut in chunk))
    for out, keep in (("prep", []), ("kept", ["--keep-tars"])):
        assert data_prep(["nemo-tarred", "--manifest", str(tarred / "manifest_*.json"), "--tar",
                          str(tarred / "audio_*.tar"), "--out", str(tmp_path / out), "--num-jobs", "1", *keep]) == 0
    shar, kept = tmp_path / "prep" / "shar" / "train", tmp_path / "kept" / "nemo" / "train"
    assert len(list(shar.glob("cuts.*.jsonl.gz"))) == 3, "one Shar shard per input shard"
    nemo = f"{{manifest: '{tarred}/manifest_*.json', tar: '{tarred}/audio_*.tar'}}"
    run = train_tiny(tmp_path / "mix", f"data.train=[[{shar},0.4],[{nemo},0.2],[{kept},0.2],"
                     f"[{corpus / 'cuts_train.jsonl.gz'},0.2]]", "trainer.max_steps=2", "data.dev=null",
                     "data.survey_max_cuts=20")
    assert (run / "final.nemo").exists()
    setup = (run / "model_setup.txt").read_text()
    # Each input surveyed from a sample of 20 cuts: a shard of 16 and 4 of another (Shar, tarred), 20 of the 48 cuts.
    assert "data.train: 80 of 80 cuts" in setup and "surveyed from a sample" in setup, setup
    assert f"{shar}: 2 of 3 shards" in setup and f"{tarred}/manifest_" in setup and "1 of 1 shards" in setup, setup
    assert f"{kept}/manifest_" in setup, setup


def test_bad_config_fails_before_any_run_dir_is_made(tiny_overrides, tmp_path, capsys):
    from streamtune.stages import train

    marker = tmp_path.parent / "MARKER"
    for bad in ("trainer.max_steps=0", "data.train=/nowhere/cuts.jsonl.gz",
                f"data.train={{manifest: 'pipe:touch {marker}', tar: x}}"):
        assert train.main(["--config", str(DEMO_RECIPE), *tiny_overrides, f"run.output_dir={tmp_path}", bad]) == 2
    err = capsys.readouterr().err
    assert "trainer.max_steps must be > 0" in err and "/nowhere/cuts.jsonl.gz' does not exist" in err
    assert "only local files are read" in err and not marker.exists(), err
    assert not any(tmp_path.iterdir()), "nothing written, `latest` untouched"


def test_dry_run_reports_and_writes_nothing(tiny_overrides, tmp_path, capsys):
    from streamtune.stages import train

    assert train.main(["--config", str(DEMO_RECIPE), *tiny_overrides, f"run.output_dir={tmp_path}", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "| encoder |" in out and "trainable" in out and "joint tensor" in out and "peak RSS" in out
    assert not any(tmp_path.iterdir())
