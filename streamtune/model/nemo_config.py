"""A recipe's ``model`` and ``data`` sections as NeMo's model config: the one translation, used by fresh models
(:func:`nemo_model_config`) and by fine-tuning start points (``streamtune.model.start_points``) alike.

The ``model`` section is NeMo's own config with a few keys of ours (``config.MODEL_KEYS``: the start point and
what of it to load, the tokenizer, the context sizes and their probabilities); the ``data`` section becomes
NeMo's Lhotse ``train_ds`` / ``validation_ds``.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from streamtune.config.loading import require, resolved
from streamtune.config.schema import MODEL_KEYS
from streamtune.data.survey import input_kind, survey_training_data, weighted_inputs
from streamtune.errors import UserError


def normalise_probs(probs: list[float] | None, n: int) -> list[float] | None:
    """NeMo checks ``sum(att_context_probs) == 1`` with a plain float sum; make that exactly true."""
    if probs is None:
        return None
    if len(probs) != n:
        raise UserError(f"model att_context_probs has {len(probs)} values for {n} att_context_size pairs")
    if any(p < 0 for p in probs) or sum(probs) <= 0:
        raise UserError("model att_context_probs must be non-negative and not all zero")
    total = math.fsum(probs)
    out = [p / total for p in probs]
    out[-1] = 1.0 - sum(out[:-1])
    while sum(out) != 1.0:  # rounding: nudge the last value by one ulp towards an exact sum
        out[-1] = math.nextafter(out[-1], 2.0 if sum(out) < 1.0 else -1.0)
    return out


def recipe_model_section(cfg: DictConfig) -> DictConfig:
    """The recipe's ``model`` section as NeMo config: resolved, our keys removed, shortcuts applied."""
    section = resolved(cfg).model
    sizes = section.get("att_context_sizes")
    probs = section.get("att_context_probs")
    with open_dict(section):
        for key in (*MODEL_KEYS, "train_ds", "validation_ds"):  # the datasets come from dataset_configs()
            section.pop(key, None)
        if sizes is not None or probs is not None:
            section.setdefault("encoder", {})
            if sizes is not None:
                section.encoder.att_context_size = sizes
            if probs is not None or sizes is not None:
                section.encoder.att_context_probs = probs
    return section


def finalise_contexts(model_cfg: DictConfig) -> None:
    """Normalise ``att_context_probs`` against the final list of context sizes."""
    enc = model_cfg.get("encoder")
    sizes = enc.get("att_context_size") if enc is not None else None
    if sizes is not None and len(sizes) and OmegaConf.is_list(sizes[0]):
        with open_dict(enc):
            enc.att_context_probs = normalise_probs(enc.get("att_context_probs"), len(sizes))


def support_adapters(model_cfg: DictConfig) -> None:
    """Swap the encoder class for its registered adapter-capable twin (ConformerEncoder -> ConformerEncoderAdapter).

    Same parameters, same forward; it only adds the adapter hooks. What NeMo's adapter scripts do.
    """
    from hydra.utils import get_class
    from nemo.core.classes.mixins.adapter_mixins import get_registered_adapter

    info = get_registered_adapter(get_class(model_cfg.encoder._target_))
    if info is None and not hasattr(get_class(model_cfg.encoder._target_), "add_adapter"):
        raise UserError(f"encoder {model_cfg.encoder._target_} has no adapter support; "
                        "use finetune.mode=frozen_encoder")
    if info is not None:
        model_cfg.encoder._target_ = info.adapter_class_path


def model_class(target: str):
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise UserError(f"model.target '{target}' is not an importable NeMo model class") from None


def _nemo_tarred_entry(value: dict) -> dict:
    """NeMo's nemo_tarred input for local manifests and tars (paths checked by the survey: no ``pipe:``, no URL,
    nothing NeMo's brace expansion would rewrite), as one brace list each."""
    def braces(paths: list[str]) -> str:
        return paths[0] if len(paths) == 1 else "{" + ",".join(paths) + "}"

    return {"type": "nemo_tarred", "manifest_filepath": braces(value["manifests"]),
            "tarred_audio_filepaths": braces(value["tars"]), "text_field": value["text_field"],
            # manifests written by `data_prep nemo-tarred --keep-tars` leave the rejected members out
            "skip_missing_manifest_entries": bool(value.get("skip_missing", False))}


def data_source(spec) -> dict:
    """NeMo Lhotse dataloader keys for a cuts file, a Shar dir, a NeMo tarred dataset, or a weighted list
    ``[[path or {manifest, tar}, weight], ...]``."""
    if isinstance(spec, str):
        kind, path = input_kind(spec)
        return {"shar_path": path} if kind == "shar" else {"cuts_path": path}
    entries = []
    for kind, value, weight in weighted_inputs(spec):
        if kind == "nemo_tarred":
            entries.append({**_nemo_tarred_entry(value), "weight": weight})
        elif kind == "shar":
            entries.append({"type": "lhotse_shar", "shar_path": value, "weight": weight})
        else:
            entries.append({"type": "lhotse", "cuts_path": value, "weight": weight})
    if not entries:
        raise UserError("data.train is an empty list; give a cuts file, a Shar dir, or [[path, weight], ...]")
    # NeMo refuses to mix iterable inputs (Shar, tarred) with cuts files (map-style) unless told to iterate all.
    mixed = len({e["type"] for e in entries}) > 1
    return {"input_cfg": entries, **({"force_iterable_dataset": True} if mixed else {})}


def dataset_configs(cfg: DictConfig, sample_rate: int) -> dict:
    """NeMo ``train_ds`` / ``validation_ds`` (Lhotse) from the recipe's ``data`` section (augmentation for
    training only), with the loader options the recipe adds in ``model.train_ds`` / ``model.validation_ds``."""
    from streamtune.data.augment import augment_options, loader_extras

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
        out["train_ds"] = {**lhotse_ds(train, shuffle=True), **augment_options(data.augment, sample_rate),
                           **loader_extras(cfg, "train_ds")}
    if data.dev:
        out["validation_ds"] = {**lhotse_ds(data.dev, shuffle=False), **loader_extras(cfg, "validation_ds")}
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
        raise UserError(f"tokenizer dir '{tok_dir}' has no tokenizer.model; "
                        "build one with `python -m data_prep tokenizer`")
    return model_cfg
