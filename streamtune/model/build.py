"""Building, loading and configuring NeMo cache-aware streaming ASR models.

We drive NeMo's own classes; nothing here wraps its modules. The one change to a module at training time is the
joint's hidden layer, fused on CPU (:mod:`streamtune.ops.joint`): per instance, never saved.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, open_dict

from streamtune.config.loading import resolved
from streamtune.data.survey import survey_training_data
from streamtune.errors import UserError
from streamtune.model.archive import check_archive, private_copy
from streamtune.model.nemo_config import dataset_configs, model_class, nemo_model_config, recipe_model_section
from streamtune.model.start_points import (
    apply_finetune_mode,
    check_mode,
    check_param_groups,
    check_style,
    start_from,
    start_point,
)
from streamtune.ops.joint import use_fast_joint
from streamtune.ops.rnnt_loss import portable_loss_config, register


def check_model_config(cfg: DictConfig) -> None:
    """Everything about the model a user can get wrong, checked before a run dir exists."""
    resolved(cfg)  # names any ??? the recipe leaves for the command line
    check_mode(cfg.finetune.mode)
    if cfg.data.train:
        survey_training_data(cfg.data)  # empty transcripts, impossible duration bounds (cached for the run)
    if cfg.model.get("init_from"):
        path = start_point(cfg)
        # Before a run dir exists: a pickle that would run code, a config naming classes outside the allow-list.
        if path.suffix == ".ckpt":
            from streamtune.model.checkpoints import checkpoint_config, load_checkpoint

            checkpoint_config(load_checkpoint(path, mmap=True), path)
        else:
            check_archive(path, f"model.init_from '{path}'")
        if cfg.data.train:
            check_style(cfg, path)  # data that would teach the start point to stop writing capitals/punctuation
        dataset_configs(cfg, 16000)
        recipe_model_section(cfg)
    else:
        nemo_model_config(cfg)


def build_model(cfg: DictConfig, trainer=None, log=print):
    """The model to train: from ``model.init_from`` or fresh from the recipe, in its fine-tuning mode, data set up.

    ``log`` receives the human-readable account of what was merged, changed and frozen.
    """
    register()  # model.loss.loss_name: streamtune
    if cfg.model.get("init_from"):
        model, report = start_from(cfg, trainer=trainer)
        if cfg.model.get("add_tokens"):
            from streamtune.model.vocabulary import add_tokens

            report += "\n" + add_tokens(model, list(cfg.model.add_tokens))
        with open_dict(model.cfg):
            model.cfg.update(dataset_configs(cfg, model.cfg.sample_rate))
        if "train_ds" in model.cfg:
            model.setup_training_data(model.cfg.train_ds)
        if "validation_ds" in model.cfg:
            model.setup_validation_data(model.cfg.validation_ds)
        log(report)
        if cfg.data.train:
            log(check_style(cfg, start_point(cfg)))
    else:
        if cfg.model.get("add_tokens"):
            raise UserError("model.add_tokens appends to a start point's vocabulary (model.init_from); a model "
                            "built fresh takes its whole vocabulary from model.tokenizer_dir")
        model = model_class(cfg.model.target)(cfg=nemo_model_config(cfg), trainer=trainer)
    log(apply_finetune_mode(model, cfg.finetune))
    check_param_groups(model)
    # Training on CPU: the joint's hidden layer fused (streamtune/ops/joint.py); GPU untouched.
    use_fast_joint(model.joint)
    return model


def load_model(path: str | Path, device: str = "cpu", expect_sha256: str | None = None):
    """Restore a ``.nemo`` (RNN-T or hybrid RNNT-CTC) for inference: eval mode, fp32, on ``device``; with
    ``expect_sha256``, only if its bytes have that sha256 (``streamtune.model.archive``)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"model '{path}' does not exist; pass a local .nemo file (train.py writes final.nemo)")
    # Read once into a private copy, hashed as read (and checked against ``expect_sha256``); the copy's config
    # must name only allowed classes; NeMo restores that copy: the bytes loaded are the bytes hashed and checked.
    copy, _ = private_copy(path, expect_sha256)
    check_archive(copy, f"model '{path}'")
    from nemo.collections.asr.models import ASRModel

    register()  # a checkpoint may name streamtune's loss
    try:
        model = ASRModel.restore_from(str(copy), map_location=device)
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


def joint_forward(model, batch):
    """Encoder -> prediction net -> joint for a NeMo ASR batch; returns (joint, tokens, enc_len, target_len).

    What a training step computes before the loss (no fused loss/WER), for benchmarks and dry runs.
    """
    audio, audio_len, tokens, tokens_len = batch
    encoded, encoded_len = model(input_signal=audio, input_signal_length=audio_len)
    decoder, target_len, _ = model.decoder(targets=tokens, target_length=tokens_len)
    joint = model.joint(encoder_outputs=encoded, decoder_outputs=decoder)
    return joint, tokens, encoded_len, target_len
