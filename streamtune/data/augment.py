"""``data.augment`` and ``model.train_ds`` / ``model.validation_ds`` extras as NeMo Lhotse loader options.

NeMo's Lhotse loader already perturbs speed, mixes noise, adds reverberation, low-passes and runs audio
through lossy codecs; ``data.augment`` reaches those options under NeMo's own names, checked here before a run
dir exists (a noise set that names a shell command, a cut-off above Nyquist, a codec libsndfile cannot write).
Any other loader option can be added with ``+model.train_ds.KEY=VALUE``: it is passed through when it is one
of NeMo's ``LhotseDataLoadingConfig`` fields that streamtune does not set itself, and refused otherwise (NeMo
would drop an unknown key with a warning, and ours would overwrite a key we set).
"""

from __future__ import annotations

import difflib
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from streamtune.config.schema import AugmentConfig
from streamtune.errors import UserError

CODECS = ("opus", "mp3", "vorbis", "gsm")
# Loader options streamtune sets from its own keys: set those instead.
OWNED = {
    "cuts_path": "data.train / data.dev", "shar_path": "data.train / data.dev", "input_cfg": "data.train",
    "manifest_filepath": "data.train (prepare the manifest with `python -m data_prep`)",
    "tarred_audio_filepaths": "data.train (prepare the shards with `python -m data_prep`)",
    "use_lhotse": None, "sample_rate": "model.sample_rate (the start point's)",
    "batch_duration": "data.batch_duration_s", "batch_size": "data.batch_size", "shuffle": None,
    "shuffle_buffer_size": "data.shuffle_buffer_size", "num_workers": "data.num_workers",
    "min_duration": "data.min_duration_s", "max_duration": "data.max_duration_s", "seed": "run.seed",
    "shard_seed": "run.seed", "pin_memory": None, "force_finite": None, "force_iterable_dataset": None,
    "use_bucketing": "data.num_buckets", "num_buckets": "data.num_buckets",
    "bucket_duration_bins": "data.num_buckets", "concurrent_bucketing": None,
}


def _pair(aug, key: str, low: float, high: float, strict: bool = False) -> list[float]:
    value = list(aug[key])
    if len(value) != 2 or not all(isinstance(v, (int, float)) for v in value):
        raise UserError(f"data.augment.{key} must be two numbers [low, high], not {value}")
    lo, hi = float(value[0]), float(value[1])
    if not (low <= lo <= hi <= high) or (strict and lo == hi):
        raise UserError(f"data.augment.{key} = [{lo:g}, {hi:g}] must satisfy {low:g} <= low {'<' if strict else '<='} "
                        f"high <= {high:g}")
    return [lo, hi]


def _prob(aug, key: str) -> float:
    value = float(aug[key])
    if not 0.0 <= value <= 1.0:
        raise UserError(f"data.augment.{key} = {value:g} is a probability, in [0, 1]")
    return value


def _noise_set(path: str) -> None:
    """The noise cuts exist, are Lhotse cuts, and read only plain audio files."""
    from lhotse import CutSet

    from streamtune.data.reading import check_safe

    if not Path(path).is_file():
        raise UserError(f"data.augment.noise_path '{path}' does not exist; give a Lhotse cuts file of noise "
                        "recordings: `python -m data_prep noise --dir NOISE_DIR --out data/noise`")
    count = 0
    try:
        for cut in CutSet.from_jsonl_lazy(path):
            check_safe(cut, f"data.augment.noise_path {path}")
            count += 1
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - lhotse raises many kinds for a file that is not cuts
        raise UserError(f"data.augment.noise_path '{path}' is not a Lhotse cuts file: {err}") from None
    if not count:
        raise UserError(f"data.augment.noise_path '{path}' has no cuts")


def _rir_set(path: str) -> None:
    from lhotse import RecordingSet

    from streamtune.data.reading import unsafe_recording

    if not Path(path).is_file():
        raise UserError(f"data.augment.rir_path '{path}' does not exist; give a Lhotse RecordingSet of room "
                        "impulse responses (`python -m data_prep noise --rirs --dir RIR_DIR --out data/rirs`), "
                        "or null for synthetic ones")
    try:
        recordings = RecordingSet.from_file(path)
    except Exception as err:  # noqa: BLE001
        raise UserError(f"data.augment.rir_path '{path}' is not a Lhotse RecordingSet: {err}") from None
    for rec in recordings:
        why = unsafe_recording(rec)
        if why:
            raise UserError(f"data.augment.rir_path {path}: recording '{rec.id}' is refused: {why}")


def _codecs(names) -> list[str]:
    """Codecs lhotse knows and this machine's libsndfile can write (tried on 0.1 s of silence)."""
    import numpy as np
    from lhotse.augmentation.compress import Compress

    names = [str(n) for n in names]
    if not names or len(set(names)) != len(names):
        raise UserError(f"data.augment.compression_codecs must name distinct codecs, not {names}")
    for name in names:
        if name not in CODECS:
            raise UserError(f"data.augment.compression_codecs: '{name}' is not one of {', '.join(CODECS)}")
        try:
            Compress(codec=name, compression_level=0.5)(np.zeros((1, 1600), dtype=np.float32), 16000)
        except Exception as err:  # noqa: BLE001 - libsndfile builds differ in the formats they write
            raise UserError(f"data.augment.compression_codecs: this machine's libsndfile cannot write '{name}' "
                            f"({err})") from None
    return names


def augment_options(aug: DictConfig, sample_rate: int) -> dict:
    """The NeMo Lhotse loader options for ``data.augment`` (only what is enabled), validated."""
    out = {}
    if aug.perturb_speed:
        out["perturb_speed"] = True
    if aug.noise_path is not None:
        _noise_set(str(aug.noise_path))
        out.update(noise_path=str(aug.noise_path), noise_snr=_pair(aug, "noise_snr", -50.0, 100.0),
                   noise_mix_prob=_prob(aug, "noise_mix_prob"))
    if aug.rir_enabled:
        if aug.rir_path is not None:
            _rir_set(str(aug.rir_path))
        out.update(rir_enabled=True, rir_path=aug.rir_path, rir_prob=_prob(aug, "rir_prob"))
    if aug.lowpass_enabled:
        out.update(lowpass_enabled=True, lowpass_prob=_prob(aug, "lowpass_prob"),
                   lowpass_frequencies_interval=_pair(aug, "lowpass_frequencies_interval", 1.0, sample_rate / 2))
    if aug.compression_enabled:
        out.update(compression_enabled=True, compression_prob=_prob(aug, "compression_prob"),
                   compression_codecs=_codecs(aug.compression_codecs),
                   compression_level_interval=_pair(aug, "compression_level_interval", 0.0, 1.0, strict=True))
    return out


def loader_extras(cfg: DictConfig, section: str) -> dict:
    """``model.<section>`` keys a recipe adds to NeMo's loader config (``+model.train_ds.truncate_duration=20``):
    NeMo ``LhotseDataLoadingConfig`` fields streamtune does not set; anything else is a :class:`UserError`."""
    from dataclasses import fields

    from nemo.collections.common.data.lhotse.dataloader import LhotseDataLoadingConfig

    extra = cfg.model.get(section)
    if extra is None:
        return {}
    if not isinstance(extra, DictConfig):
        raise UserError(f"model.{section} must be a mapping of NeMo Lhotse loader options, not {extra!r}")
    known = {f.name for f in fields(LhotseDataLoadingConfig)}
    augment = set(OmegaConf.structured(AugmentConfig).keys())
    out = {}
    for key in extra.keys():
        where = f"model.{section}.{key}"
        if key in augment:
            raise UserError(f"{where} is an augmentation: set data.augment.{key} (checked, training data only)")
        if key in OWNED:
            ours = OWNED[key]
            raise UserError(f"{where} is set by streamtune" + (f" from {ours}; set that instead" if ours else ""))
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known - set(OWNED)), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"{where} is not an option of NeMo's Lhotse loader (LhotseDataLoadingConfig); NeMo "
                            f"would drop it.{hint}")
        value = extra.get(key)
        out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out

