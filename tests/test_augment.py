"""data.augment reaches NeMo's Lhotse loader and changes the audio of a training batch the way it says;
model.train_ds extras are passed through or refused, never dropped."""

from __future__ import annotations

import numpy as np
import pytest

from bench.geometry import TINY
from tests.helpers import DEMO_RECIPE

RATE = 16000


@pytest.fixture(scope="module")
def sound(corpus, tmp_path_factory):
    """Eight cuts of one second of white noise (energy at every frequency) with a corpus transcript, and a
    noise set of one 5-second recording made by `data_prep noise`; returns (dir, the cuts' samples)."""
    import soundfile as sf
    from lhotse import CutSet, MonoCut, Recording, SupervisionSegment

    from streamtune.data.noise import prepare_noise

    root = tmp_path_factory.mktemp("augment")
    rng = np.random.default_rng(0)
    clean = (0.1 * rng.standard_normal(RATE)).astype(np.float32)
    sf.write(root / "sound.wav", clean, RATE, subtype="FLOAT")
    (root / "noise").mkdir()
    sf.write(root / "noise" / "hum.wav", (0.1 * rng.standard_normal(5 * RATE)).astype(np.float32), RATE,
             subtype="FLOAT")
    prepare_noise(root / "noise", root / "noise_set")
    text = next(iter(CutSet.from_file(corpus / "cuts_train.jsonl.gz"))).supervisions[0].text
    rec = Recording.from_file(root / "sound.wav", recording_id="sound")
    cuts = [MonoCut(id=f"sound-{i}", start=0.0, duration=1.0, channel=0, recording=rec,
                    supervisions=[SupervisionSegment(id=f"sound-{i}", recording_id="sound", start=0.0, duration=1.0,
                                                     text=text)]) for i in range(8)]
    CutSet.from_cuts(cuts).to_file(root / "cuts.jsonl.gz")
    return root, clean


def _config(corpus, root, *overrides):
    from streamtune.config.loading import load_config

    return load_config(DEMO_RECIPE, [*TINY, f"model.tokenizer_dir={corpus / 'tokenizer'}",
                                     f"data.train={root / 'cuts.jsonl.gz'}", "data.dev=null", "data.num_buckets=0",
                                     "data.batch_duration_s=4", f"run.output_dir={root / 'runs'}", *overrides])


def _batches(corpus, root, *overrides, n: int = 4) -> list[np.ndarray]:
    """The audio of the first ``n`` training batches NeMo's loader gives the model, one array per utterance."""
    from streamtune.model.build import build_model

    model = build_model(_config(corpus, root, *overrides), log=lambda _: None)
    out = []
    for k, batch in enumerate(model.train_dataloader()):  # (eight cuts: an epoch is two batches unless perturbed)
        if k == n:
            break
        audio, lengths = batch[:2]
        out += [audio[i, :length].numpy() for i, length in enumerate(lengths.tolist())]
    return out


def test_speed_perturbation_changes_duration_by_the_factor(corpus, sound):
    root, clean = sound
    lengths = {len(a) for a in _batches(corpus, root, "data.augment.perturb_speed=true", n=6)}
    expected = {len(clean): 1.0, round(len(clean) / 0.9): 0.9, round(len(clean) / 1.1): 1.1}
    assert all(any(abs(n - e) <= 2 for e in expected) for n in lengths), lengths
    assert len(lengths) == 3, f"every speed drawn: {lengths}"
    assert {len(a) for a in _batches(corpus, root)} == {len(clean)}, "off by default"


def _share_above(audio: np.ndarray, hz: float) -> float:
    power = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(len(audio), 1 / RATE)
    return float(power[freqs > hz].sum() / power.sum())


def test_lowpass_removes_energy_above_the_cutoff(corpus, sound):
    root, clean = sound
    assert _share_above(clean, 2200) > 0.6
    out = _batches(corpus, root, "data.augment.lowpass_enabled=true", "data.augment.lowpass_prob=1.0",
                   "data.augment.lowpass_frequencies_interval=[2000,2000]", n=2)
    assert all(_share_above(a, 2200) < 0.01 for a in out), [_share_above(a, 2200) for a in out]
    assert all(_share_above(a, 500) > 0.5 * _share_above(clean, 500) for a in out), "below the cut-off kept"


def test_noise_is_mixed_at_an_snr_within_the_range(corpus, sound):
    root, clean = sound
    out = _batches(corpus, root, f"data.augment.noise_path={root / 'noise_set' / 'cuts_noise.jsonl.gz'}",
                   "data.augment.noise_snr=[5,10]", "data.augment.noise_mix_prob=1.0", n=3)
    snrs = []
    for audio in out:
        assert len(audio) == len(clean)
        added = audio - clean
        snrs.append(10 * np.log10(np.sum(clean**2) / np.sum(added**2)))
    assert all(4.5 <= s <= 10.5 for s in snrs), snrs
    assert max(snrs) - min(snrs) > 0.5, f"SNRs drawn from the range, not one value: {snrs}"


def test_codec_changes_the_audio(corpus, sound):
    root, clean = sound
    out = _batches(corpus, root, "data.augment.compression_enabled=true", "data.augment.compression_prob=1.0",
                   "data.augment.compression_codecs=[opus]", "data.augment.compression_level_interval=[0.8,0.9]", n=1)
    assert all(len(a) != len(clean) or not np.allclose(a, clean, atol=1e-3) for a in out)


def test_augment_and_loader_keys_are_checked(corpus, sound):
    from streamtune.errors import UserError
    from streamtune.model.build import check_model_config

    root, _ = sound
    with pytest.raises(UserError, match=r"unknown config key 'data.augment.noise_snrr'.*Did you mean "
                                        r"data.augment.noise_snr"):
        _config(corpus, root, "data.augment.noise_snrr=[1,2]")
    bad = {
        "data.augment.noise_path=/nowhere/noise.jsonl.gz": "data.augment.noise_path '/nowhere/noise.jsonl.gz' "
                                                          "does not exist",
        "data.augment.lowpass_frequencies_interval=[3000,9000]": r"<= high <= 8000",
        "data.augment.noise_mix_prob=1.5": "is a probability",
        "data.augment.compression_codecs=[aac]": "'aac' is not one of opus, mp3, vorbis, gsm",
        "+model.train_ds.perturb_speed=true": "set data.augment.perturb_speed",
        "+model.train_ds.batch_duration=10": "set by streamtune from data.batch_duration_s",
        "+model.train_ds.truncate_durration=10": "not an option of NeMo's Lhotse loader.*truncate_duration",
    }
    for override, message in bad.items():
        extra = ["data.augment.lowpass_enabled=true"] if "lowpass" in override else \
            ["data.augment.compression_enabled=true"] if "codecs" in override else []
        if "noise_mix" in override:
            extra = [f"data.augment.noise_path={root / 'noise_set' / 'cuts_noise.jsonl.gz'}"]
        with pytest.raises(UserError, match=message):
            check_model_config(_config(corpus, root, override, *extra))
    # A loader option streamtune does not set is passed through to NeMo's loader, and takes effect.
    out = _batches(corpus, root, "+model.train_ds.truncate_duration=0.5", n=1)
    assert {len(a) for a in out} == {RATE // 2}
