"""Building, loading and configuring NeMo cache-aware streaming ASR models.

We drive NeMo's own classes; nothing here wraps its modules.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from streamtune.config import require
from streamtune.errors import UserError
from streamtune.finetune import finalise_contexts, recipe_model_section, support_adapters


@dataclass(frozen=True)
class ChunkMode:
    """One streaming mode: an ``att_context_size`` pair and what it means in time."""

    left: int
    right: int
    frame_ms: int  # one encoder frame (subsampling factor x hop)

    @property
    def att_context(self) -> list[int]:
        return [self.left, self.right]

    @property
    def chunk_frames(self) -> int:
        return self.right + 1  # chunked_limited: a chunk is right + 1 frames

    @property
    def chunk_ms(self) -> int:
        return self.chunk_frames * self.frame_ms

    def __str__(self) -> str:
        return f"{self.chunk_ms}ms[{self.left},{self.right}]"


def dataset_configs(cfg: DictConfig, sample_rate: int) -> dict:
    """NeMo ``train_ds`` / ``validation_ds`` (Lhotse) from the recipe's ``data`` section."""
    from streamtune.survey import survey_training_data

    data = cfg.data
    bucketing = {}
    if data.train and data.num_buckets:
        bins = survey_training_data(data).bucket_bins(int(data.num_buckets), float(data.batch_duration_s))
        if bins:
            # Not concurrent: a background thread filling the buckets would make the batch order depend on timing
            # (and break exact resume).
            bucketing = {"use_bucketing": True, "num_buckets": len(bins) + 1, "bucket_duration_bins": bins,
                         "concurrent_bucketing": False}

    def lhotse_ds(spec, shuffle: bool) -> dict:
        return {
            "use_lhotse": True,
            **data_source(spec),
            "sample_rate": sample_rate,
            "batch_duration": data.batch_duration_s,
            "batch_size": data.batch_size,
            "shuffle": shuffle,
            "shuffle_buffer_size": data.shuffle_buffer_size,
            "num_workers": data.num_workers,
            "min_duration": data.min_duration_s,
            "max_duration": data.max_duration_s,
            "seed": int(cfg.run.seed),
            "shard_seed": int(cfg.run.seed),
            "pin_memory": False,
            # Shar and weighted mixes repeat forever; evaluation sets must end.
            "force_finite": not shuffle,
            **(bucketing if shuffle else {}),
        }

    out = {}
    if data.train:
        train = OmegaConf.to_container(data.train) if OmegaConf.is_config(data.train) else data.train
        out["train_ds"] = lhotse_ds(train, shuffle=True)
    if data.dev:
        out["validation_ds"] = lhotse_ds(data.dev, shuffle=False)
    return out


def nemo_model_config(cfg: DictConfig) -> DictConfig:
    """NeMo's model config for a model built from the recipe alone (no ``model.init_from``)."""
    require(cfg, ["model.target", "model.tokenizer.dir"])
    model_cfg = recipe_model_section(cfg)
    with open_dict(model_cfg):
        model_cfg.update(dataset_configs(cfg, model_cfg.sample_rate))
    finalise_contexts(model_cfg)
    if cfg.finetune.mode == "adapters":
        support_adapters(model_cfg)
    tok_dir = Path(model_cfg.tokenizer.dir)
    if not (tok_dir / "tokenizer.model").exists():
        raise UserError(f"tokenizer dir '{tok_dir}' has no tokenizer.model; build one with `python -m data_prep tokenizer`")
    return model_cfg


def check_model_config(cfg: DictConfig) -> None:
    """Everything about the model a user can get wrong, checked before a run dir exists."""
    from streamtune.config import resolved
    from streamtune.finetune import check_mode, start_point

    resolved(cfg)  # names any ??? the recipe leaves for the command line
    check_mode(cfg.finetune.mode)
    if cfg.data.train:
        from streamtune.survey import survey_training_data

        survey_training_data(cfg.data)  # empty transcripts, impossible duration bounds (cached for the run)
    if cfg.model.get("init_from"):
        start_point(cfg)
        dataset_configs(cfg, 16000)
        recipe_model_section(cfg)
    else:
        nemo_model_config(cfg)


def data_source(spec) -> dict:
    """NeMo Lhotse dataloader keys for a cuts file, a Shar dir, or a weighted list ``[[path, weight], ...]``."""
    from streamtune.survey import input_kind

    if isinstance(spec, str):
        kind, path = input_kind(spec)
        return {"shar_path": path} if kind == "shar" else {"cuts_path": path}
    entries = []
    for entry in spec:
        try:
            path, weight = entry
            weight = float(weight)
        except (TypeError, ValueError):
            raise UserError(f"data entry {entry!r} is not [path, weight]") from None
        kind, path = input_kind(path)
        entries.append({"type": "lhotse_shar", "shar_path": path, "weight": weight} if kind == "shar"
                       else {"type": "lhotse", "cuts_path": path, "weight": weight})
    if not entries:
        raise UserError("data.train is an empty list; give a cuts file, a Shar dir, or [[path, weight], ...]")
    # NeMo refuses to mix Shar (iterable) with cuts files (map-style) unless told to iterate both.
    mixed = len({e["type"] for e in entries}) > 1
    return {"input_cfg": entries, **({"force_iterable_dataset": True} if mixed else {})}


def model_class(target: str):
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise UserError(f"model.target '{target}' is not an importable NeMo model class") from None


def build_model(cfg: DictConfig, trainer=None, log=print):
    """The model to train: from ``model.init_from`` or fresh from the recipe, in its fine-tuning mode, data set up.

    ``log`` receives the human-readable account of what was merged, changed and frozen.
    """
    from streamtune.finetune import apply_finetune_mode, check_param_groups, start_from
    from streamtune.losses import register

    register()  # model.loss.loss_name: streamtune
    if cfg.model.get("init_from"):
        model, report = start_from(cfg, trainer=trainer)
        with open_dict(model.cfg):
            model.cfg.update(dataset_configs(cfg, model.cfg.sample_rate))
        if "train_ds" in model.cfg:
            model.setup_training_data(model.cfg.train_ds)
        if "validation_ds" in model.cfg:
            model.setup_validation_data(model.cfg.validation_ds)
        log(report)
    else:
        if cfg.model.get("tokenizer_dir"):
            raise UserError("model.tokenizer_dir changes the vocabulary of a model given by model.init_from; "
                            "a model built from the recipe uses model.tokenizer.dir")
        model = model_class(cfg.model.target)(cfg=nemo_model_config(cfg), trainer=trainer)
    log(apply_finetune_mode(model, cfg.finetune))
    check_param_groups(model)
    return model


def load_model(path: str | Path, device: str = "cpu"):
    """Restore a ``.nemo`` (RNN-T or hybrid RNNT-CTC) for inference: eval mode, fp32, on ``device``."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model '{path}' does not exist; pass a local .nemo file (train.py writes final.nemo)")
    from nemo.collections.asr.models import ASRModel

    from streamtune.losses import register

    register()  # a checkpoint may name streamtune's loss
    try:
        model = ASRModel.restore_from(str(path), map_location=device)
    except Exception as err:  # NeMo raises many kinds for a bad archive
        raise UserError(f"model '{path}' could not be loaded as a NeMo ASR model: {err}") from None
    if hasattr(model, "cur_decoder") and hasattr(model, "change_decoding_strategy"):
        # Hybrid RNNT+CTC checkpoints: stream with the RNN-T head.
        model.change_decoding_strategy(decoder_type="rnnt", verbose=False)
    model.eval()
    return model


def save_model(model, path: str | Path) -> Path:
    """Write a ``.nemo`` that plain NeMo restores (streamtune's loss named as NeMo's default, the same function),
    atomically: a temporary file in the same directory, then a rename, so a kill never leaves a truncated file."""
    import os

    from streamtune.losses import portable_loss_config

    path = Path(path)
    loss = portable_loss_config(model.cfg.get("loss"))
    if loss is not None:
        with open_dict(model.cfg):
            model.cfg.loss = loss
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        model.save_to(str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def chunk_modes(model) -> list[ChunkMode]:
    """Every chunk mode the encoder was configured with, default (first) first."""
    enc = model.encoder
    if getattr(enc, "att_context_style", None) != "chunked_limited":
        raise UserError(
            f"the model's encoder uses att_context_style={getattr(enc, 'att_context_style', None)!r}; "
            "streamtune's streaming runner needs a cache-aware chunked_limited model"
        )
    hop_s = float(model.cfg.preprocessor.window_stride)
    frame_ms = int(round(enc.subsampling_factor * hop_s * 1000))
    return [ChunkMode(int(left), int(right), frame_ms) for left, right in enc.att_context_size_all]


def select_modes(model, chunk_ms: list[int] | None) -> list[ChunkMode]:
    modes = chunk_modes(model)
    if not chunk_ms:
        return modes
    by_ms = {m.chunk_ms: m for m in modes}
    missing = [ms for ms in chunk_ms if ms not in by_ms]
    if missing:
        raise UserError(f"chunk sizes {missing} ms are not modes of this model; it has {sorted(by_ms)} ms")
    return [by_ms[ms] for ms in chunk_ms]


def joint_forward(model, batch):
    """Encoder -> prediction net -> joint for a NeMo ASR batch; returns (joint, tokens, enc_len, target_len).

    What a training step computes before the loss (no fused loss/WER), for benchmarks and dry runs.
    """
    audio, audio_len, tokens, tokens_len = batch
    encoded, encoded_len = model(input_signal=audio, input_signal_length=audio_len)
    decoder, target_len, _ = model.decoder(targets=tokens, target_length=tokens_len)
    joint = model.joint(encoder_outputs=encoded, decoder_outputs=decoder)
    return joint, tokens, encoded_len, target_len
