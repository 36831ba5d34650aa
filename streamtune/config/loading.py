"""Recipe configuration: YAML + ``key=value`` overrides merged onto a typed schema.

Every entry point reads ``--config RECIPE`` plus OmegaConf dotlist overrides.
The merged config is in struct mode, so a misspelt key (in the recipe or on
the command line) is an error that names the key, not a silent new key. The
``model`` section is NeMo's own model config, passed through untouched; inside
it, a key the recipe does not already have can only be *added* on purpose,
with a leading ``+`` (``+model.encoder.xscaling=false``).
"""

from __future__ import annotations

import difflib
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException, ValidationError

from streamtune.errors import UserError


@dataclass
class RunConfig:
    name: str = MISSING
    seed: int = MISSING
    # Run dirs are <output_dir>/<name>/<timestamp>/; a `latest` link points at the newest.
    output_dir: str = "runs"
    # null: a new run. "auto": continue the newest run of this name from its newest valid checkpoint
    # (weights, optimiser, scheduler, step, RNG and data position); a new run if there is none.
    # Or a path to a .ckpt to continue from.
    resume: Optional[str] = None


@dataclass
class AugmentConfig:
    # Training-data augmentation by NeMo's Lhotse loader (nemo/collections/common/data/lhotse/dataloader.py),
    # under NeMo's own key names; validation data is never augmented. Off unless enabled.
    # Speed perturbation: every cut is also drawn at 0.9x and 1.1x speed (NeMo's 3-way perturbation).
    perturb_speed: bool = False
    # Noise: a Lhotse cuts file of noise recordings, mixed into a share noise_mix_prob of the cuts at an SNR
    # drawn from noise_snr (dB).
    noise_path: Optional[str] = None
    noise_snr: List[float] = field(default_factory=lambda: [10.0, 20.0])
    noise_mix_prob: float = 0.5
    # Room impulse responses: a Lhotse RecordingSet file (null: synthetic rooms).
    rir_enabled: bool = False
    rir_path: Optional[str] = None
    rir_prob: float = 0.5
    # Low-pass: a cut-off (Hz) drawn log-uniformly from the interval; 8 kHz telephone audio is [3400, 4000].
    lowpass_enabled: bool = False
    lowpass_frequencies_interval: List[float] = field(default_factory=lambda: [3500.0, 8000.0])
    lowpass_prob: float = 0.5
    # Lossy codecs (opus, mp3, vorbis, gsm) at a level drawn from the interval (0 = best quality, 1 = worst).
    compression_enabled: bool = False
    compression_codecs: List[str] = field(default_factory=lambda: ["opus"])
    compression_level_interval: List[float] = field(default_factory=lambda: [0.8, 0.99])
    compression_prob: float = 0.5


@dataclass
class DataConfig:
    # Each a Lhotse cuts file (cuts_<split>.jsonl.gz) or Shar dir written by `python -m data_prep`;
    # data.train may also be a weighted mix: [[path, weight], ...].
    train: Any = None
    dev: Optional[str] = None
    test: Optional[str] = None
    # Deprecated spelling of model.tokenizer_dir (still read, with a warning).
    tokenizer_dir: Optional[str] = None
    # Dynamic batching by total audio seconds per batch (Lhotse); batch_size caps the count.
    batch_duration_s: float = 60.0
    batch_size: Optional[int] = None
    # Duration bucketing (Lhotse DynamicBucketingSampler): each batch is drawn from one of num_buckets buckets
    # of similar durations, with bin edges that put the same number of training cuts in every bucket (surveyed
    # before training). The RNN-T joint is [batch, frames, tokens, vocab]: padding costs quadratically, so
    # mixing 2 s and 30 s utterances in one batch wastes most of it. Fewer buckets are used when the data is too
    # small to fill two batches per bucket; 0 = off.
    num_buckets: int = 30
    # Cuts outside [min_duration_s, max_duration_s] are skipped (never truncated), counted and listed in the run
    # dir's skipped.jsonl.
    min_duration_s: float = 0.1
    max_duration_s: float = 30.0
    # Cuts whose transcript is empty stop training with an error naming them, unless this is true.
    allow_empty_text: bool = False
    # Fine-tuning a start point that writes capitals and punctuation on transcripts without them stops with an
    # error (it would learn to stop writing them), unless this is true. Or mix in data that has them.
    allow_style_change: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 0
    shuffle_buffer_size: int = 10000


@dataclass
class EarlyStoppingConfig:
    # Stop when the monitored WER has not improved by more than min_delta for `patience` validations in a row
    # (a completed run: final.nemo is written). null = off.
    patience: Optional[int] = None
    min_delta: float = 0.0
    monitor: Optional[str] = None  # null: trainer.monitor


@dataclass
class TrainerConfig:
    max_steps: int = MISSING
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    # "ddp" for several devices or nodes (Lightning launches the local processes, or use torchrun/SLURM).
    strategy: str = "auto"
    # "auto": bf16-mixed on a GPU that supports it, fp32 otherwise (CPU).
    precision: str = "auto"
    val_check_interval: int = 200  # steps between validations
    # Checkpoint selection: val_wer_mean, val_wer_<ms>ms for one chunk mode, or NeMo's val_wer (default mode).
    monitor: str = "val_wer_mean"
    save_top_k: int = 2
    # Periodic checkpoint (and `last.ckpt`) every N steps; null = every val_check_interval.
    checkpoint_every_n_steps: Optional[int] = None
    # Skip optimiser steps whose gradients are NaN/inf (the update is dropped, the step counted
    # and logged as train_skipped_steps) instead of letting one bad batch destroy the weights.
    skip_nonfinite_steps: bool = True
    log_every_n_steps: int = 10
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    enable_progress_bar: bool = True
    # CPU threads for torch (None: torch's default). The demo pins it for repeatable timing.
    num_threads: Optional[int] = None
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    # Stop after this much training time ("DD:HH:MM:SS"; a completed run: final.nemo is written).
    max_time: Optional[str] = None
    # Exponential moving average of the weights (e.g. 0.999): validated beside the raw weights (the val_wer_*
    # metrics are the EMA's, val_wer_*_raw the raw weights'), and final.nemo holds the EMA weights. null = off.
    ema_decay: Optional[float] = None
    # Any other argument of lightning.pytorch.Trainer can be set here too (trainer.limit_val_batches=10,
    # trainer.profiler=simple); it is checked against the Trainer's signature.


@dataclass
class FinetuneConfig:
    # What trains: "full" (everything), "frozen_encoder" (prediction net + joint only) or
    # "adapters" (linear adapters added to every encoder layer; the rest of the encoder frozen).
    # Per-module learning rates: NeMo's own model.optim_param_groups, e.g. {encoder: {lr: 1e-5}}.
    mode: str = "full"
    adapter_dim: int = 64
    # With mode=adapters: also train the prediction net and joint.
    adapters_train_decoder_joint: bool = False


@dataclass
class LoggerConfig:
    # W&B: "disabled", "offline" (the real client, no network) or "online".
    wandb_mode: str = "disabled"
    wandb_project: str = "streamtune"
    # Seconds `finish()` may wait for uploads at the end of an online run (what is left stays for `wandb sync`).
    wandb_finish_timeout_s: float = 60.0
    csv: bool = True
    # TensorBoard event files in <run dir>/tensorboard/ (`tensorboard --logdir runs`).
    tensorboard: bool = False


@dataclass
class EvalConfig:
    # Chunk modes to evaluate, in ms; empty = every att_context_size the model was trained with.
    chunk_ms: List[int] = field(default_factory=list)
    # How each chunk mode is decoded: "streaming" (chunk by chunk, caches carried) and/or "offline".
    decodes: List[str] = field(default_factory=lambda: ["streaming", "offline"])
    # Deprecated spelling of eval.decodes (still read, with a warning).
    modes: Optional[List[str]] = None
    # The RNN-T search: "greedy" (NeMo's greedy_batch; word confidence included) or "beam" (NeMo's malsd_batch
    # with beam_size; when streaming it runs once over the streamed encoder output at the end: NeMo's beam
    # searches cannot continue across chunks). See streamtune/streaming/decoding.py.
    decoding: str = "greedy"
    beam_size: int = 4
    # Words or phrases to boost (NeMo's phrase boosting), as a list or a file with one per line; written in
    # the tokenizer's case. boost_alpha weighs the boosting in the search, boost_score is the bonus per piece.
    boost_words: Any = None
    boost_alpha: float = 1.0
    boost_score: float = 1.0
    # Utterances decoded together as concurrent streams (results do not depend on it).
    batch_size: int = 8
    # Gates (WER points, %; --max-wer / --max-regression override): exit 1 when a candidate's streaming WER on
    # any test set and chunk size is above max_wer, or above the baseline's by more than max_regression.
    max_wer: Optional[float] = None
    max_regression: Optional[float] = None
    # Deltas above this many WER points are flagged as regressions in the report (the gate is max_regression).
    regression_tolerance: float = 0.5
    # Every delta gets a 95 % paired bootstrap interval (utterances resampled, fixed seed); a delta is
    # "significant" when its interval excludes 0. With this true, --max-regression fails only on a regression
    # that is over the limit *and* significant.
    bootstrap_replications: int = 10000
    regression_needs_significance: bool = True
    # Per-step compute is timed at these numbers of concurrent streams, each stream latency_audio_s long.
    latency_streams: List[int] = field(default_factory=lambda: [1, 4, 16])
    latency_audio_s: float = 8.0
    output_dir: Optional[str] = None
    # glibc only: allocations of at least this many MiB are mapped and returned to the system when freed. glibc's
    # own threshold grows to 32 MiB, and batches of varying shapes then fragment the heap: peak memory crept up
    # with the test set (1,000 vs 100 utterances: 1.23-1.29x; 4 MiB: 1.10x, 0-15 % more time; see
    # BENCHMARKS.md "Evaluation at scale"). 0 keeps glibc's default; at most 32 (glibc's limit).
    mmap_threshold_mib: int = 4


@dataclass
class ExportConfig:
    name: Optional[str] = None  # bundle name; default run.name
    dist_dir: str = "dist"
    # Parity set: cuts file (default data.dev, else data.test, else generated speech) and how many
    # utterances of it to use (0 = all).
    parity_cuts: Optional[str] = None
    parity_max_utts: int = 64
    # Encoder-output max abs difference allowed between streaming and offline (and ONNX vs PyTorch).
    parity_atol: float = 1e-4
    # int8 copies of the ONNX files: every variant listed is made and scored on the parity set, the one with
    # the smallest worst-mode WER rise is kept as onnx/<ms>ms-int8 (variants: streamtune/export/onnx_export.py).
    # It may cost at most int8_max_wer_delta points (the gate); int8_target_wer_delta is the goal the card reports
    # it against.
    int8: bool = True
    int8_variants: List[str] = field(default_factory=lambda: [
        "dynamic", "dynamic-per-channel", "encoder-dynamic-per-channel", "encoder-matmul-per-channel",
        "encoder-static"])
    int8_max_wer_delta: float = 2.0
    int8_target_wer_delta: float = 0.5
    # sherpa-onnx decodes the parity set from the exported files; its WER may be at most this many points above
    # our ONNX streaming WER.
    sherpa_check: bool = True
    sherpa_max_wer_delta: float = 2.0
    # The int8 and sherpa-onnx gates decide with a paired bootstrap over the parity set's utterances: a mode fails
    # only when it is significantly worse than allowed, and is "inconclusive" when the set cannot tell. With
    # strict_gates (or `python -m export ... --strict`) an inconclusive gate blocks `package` too.
    strict_gates: bool = False
    # sherpa-onnx's modified beam search (this many active paths; 0 = skip) is scored too, and with hotwords
    # (a list or a file, one word or phrase per line, in the tokenizer's case) when given.
    sherpa_beam: int = 4
    hotwords: Any = None
    # evaluate.py's results.json for the model card (default: <model dir>/eval/results.json).
    results: Optional[str] = None
    # Also write dist/<name>.tar.gz, byte-reproducible (sorted entries, fixed mtimes and owners).
    tarball: bool = False


@dataclass
class RecipeConfig:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    # NeMo's own model config (target class, preprocessor, encoder, decoder, joint, ...).
    model: Dict[str, Any] = field(default_factory=dict)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


# Keys of ours inside the `model` section (everything else there is NeMo's own config). Always present (null
# when unset), so a recipe or the command line can set them without a '+'.
MODEL_KEYS = ("target", "init_from", "init_include", "init_exclude", "tokenizer_dir", "att_context_sizes",
              "att_context_probs")


# Lightning Trainer arguments streamtune sets itself, with the key that sets them.
TRAINER_OWNED = {
    "default_root_dir": "run.output_dir", "max_epochs": "trainer.max_steps (training is step-driven)",
    "min_epochs": "trainer.max_steps", "max_steps": "trainer.max_steps",
    "limit_train_batches": "trainer.max_steps", "logger": "logger.*", "callbacks": "the trainer.* options",
    "plugins": "streamtune (atomic checkpoint writes)", "use_distributed_sampler": "streamtune (Lhotse shards data)",
    "check_val_every_n_epoch": "trainer.val_check_interval", "enable_checkpointing": "trainer.save_top_k",
}


def trainer_arguments() -> set[str]:
    """The keyword arguments of ``lightning.pytorch.Trainer``."""
    import inspect

    from lightning.pytorch import Trainer

    return {n for n in inspect.signature(Trainer.__init__).parameters if n != "self"}


def _allow_trainer_keys(cfg: DictConfig, keys: list[str], where: str) -> None:
    """Open ``trainer.<key>`` for each key that is a Lightning Trainer argument not in our schema; a key
    streamtune sets itself is an error naming the key to use. Other unknown keys are left to fail as typos."""
    present = set(cfg.trainer.keys())  # (`in` would miss a key whose value is ??? still)
    extra = [k for k in dict.fromkeys(keys) if k not in present]
    if not extra:
        return
    params = trainer_arguments()
    for key in extra:
        if key in TRAINER_OWNED:
            raise UserError(f"trainer.{key} in {where} is set by streamtune from {TRAINER_OWNED[key]}")
        if key in params:
            with open_dict(cfg.trainer):
                cfg.trainer[key] = None


def _trainer_override_keys(overrides: list[str]) -> list[str]:
    return [item.split("=", 1)[0].split(".")[1] for item in overrides
            if item.startswith("trainer.") and item.count(".") >= 1 and "=" in item]


def _known_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key in cfg.keys():
        full = f"{prefix}{key}"
        keys.append(full)
        value = cfg._get_node(key)
        if isinstance(value, DictConfig) and not value._is_missing() and not value._is_none():
            keys.extend(_known_keys(value, full + "."))
    return keys


def _unknown_key_error(err: ConfigKeyError, where: str, cfg: DictConfig, overrides: list[str] = ()) -> UserError:
    full_key = getattr(err, "full_key", None) or str(err)
    # Name the key as the user typed it (OmegaConf stops at the first unknown level).
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+")
        if key == full_key or key.startswith(full_key + "."):
            full_key = key
            break
    known = _known_keys(cfg)
    if full_key.startswith("trainer."):
        known += [f"trainer.{k}" for k in trainer_arguments() if k not in TRAINER_OWNED]
    close = difflib.get_close_matches(full_key, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    add = " To add a new key inside `model`, prefix it with '+'." if full_key.startswith("model.") else ""
    return UserError(f"unknown config key '{full_key}' in {where}.{hint}{add}")


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    plain, added = [], []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value")
        if item.startswith("+"):
            if not item.startswith("+model."):
                raise UserError(
                    f"override '{item}': only keys inside `model` (NeMo's config) can be added with '+'; "
                    "every other section has a fixed schema"
                )
            added.append(item[1:])
        else:
            plain.append(item)
    return plain, added


# Old spellings still read for one release: (old key, new key). Each use prints one line saying so.
DEPRECATED_KEYS = (("eval.modes", "eval.decodes"), ("data.tokenizer_dir", "model.tokenizer_dir"))
# A recipe may start from another: `base: full_finetune.yaml` (relative to the recipe), then override it.
BASE_KEY = "base"


def find_recipe(name: str | Path) -> Path:
    """A recipe file: the path as given, else a recipe shipped with streamtune by name (``nemotron/full_finetune``,
    ``.yaml`` optional), else a :class:`UserError` listing the shipped ones."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = packaged_recipes()
    key = str(name).removesuffix(".yaml").removeprefix("recipes/")
    if key in shipped:
        return shipped[key]
    raise UserError(f"recipe '{name}' does not exist; pass a YAML file or one of the shipped recipes: "
                    f"{', '.join(sorted(shipped))}")


def packaged_recipes() -> dict[str, Path]:
    """``{"demo/tiny_cpu": path, "nemotron/full_finetune": path, ...}``: the recipes installed with streamtune
    (``streamtune/recipes/`` in an installed package; the checkout's ``recipes/`` otherwise)."""
    here = Path(__file__).resolve().parents[1]  # streamtune/
    root = here / "recipes"
    if not root.is_dir():
        root = here.parent / "recipes"
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def _read_recipe(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    """A recipe YAML with its ``base`` chain merged underneath it (the recipe's own values win)."""
    if not path.is_file():
        raise UserError(f"recipe '{path}' does not exist; pass --config with a YAML file under recipes/")
    if path.resolve() in seen:
        raise UserError(f"recipe '{path}' is its own base (through {' -> '.join(str(p) for p in seen)})")
    try:
        recipe_cfg = OmegaConf.load(path)
    except Exception as err:  # yaml errors have many types
        raise UserError(f"recipe '{path}' is not valid YAML: {err}") from None
    base = recipe_cfg.pop(BASE_KEY, None) if isinstance(recipe_cfg, DictConfig) else None
    if base is None:
        return recipe_cfg
    parent = _read_recipe(path.parent / str(base), (*seen, path.resolve()))
    return OmegaConf.merge(parent, recipe_cfg)


def _apply_deprecated(cfg: DictConfig, overrides: list[str] = ()) -> None:
    """Copy each deprecated key's value to its new key (warning once per key). Both keys on the command line with
    different values is an error; otherwise the old spelling, where it is used, wins over the recipe's new key."""
    import sys

    given = {item.split("=", 1)[0].lstrip("+"): item.split("=", 1)[1] for item in overrides if "=" in item}
    for old, new in DEPRECATED_KEYS:
        value = OmegaConf.select(cfg, old)
        if value is None:
            continue
        if old in given and new in given and OmegaConf.select(cfg, new) != value:
            raise UserError(f"{old} (deprecated) and {new} are both set, differently; set only {new}")
        print(f"warning: config key '{old}' is deprecated and will go in the next release; use '{new}'",
              file=sys.stderr)
        OmegaConf.update(cfg, new, value, force_add=True)


def missing_keys(cfg: DictConfig, keys: list[str] | None = None) -> None:
    """A :class:`UserError` naming every unset mandatory value (``???``), or only those among ``keys``."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if keys is not None:
        missing = [k for k in missing if k in keys]
    if missing:
        raise UserError("required config key(s) not set (??? in the recipe): " + ", ".join(missing) +
                        "; set them in the recipe or pass KEY=VALUE")


def load_config(recipe: str | Path | None, overrides: list[str] | None = None, *,
                check_missing: bool = True) -> DictConfig:
    """Load a recipe (and its ``base`` chain) onto the schema, apply overrides, and validate.

    Raises :class:`UserError` naming the file or key for anything a user can fix.
    """
    overrides = list(overrides or [])
    schema = OmegaConf.structured(RecipeConfig)
    cfg = schema
    if recipe is not None:
        recipe_cfg = _read_recipe(find_recipe(recipe))
        trainer = recipe_cfg.get("trainer") if isinstance(recipe_cfg, DictConfig) else None
        if isinstance(trainer, DictConfig):
            _allow_trainer_keys(schema, list(trainer.keys()), f"recipe {recipe}")
        try:
            cfg = OmegaConf.merge(schema, recipe_cfg)
        except ConfigKeyError as err:
            raise _unknown_key_error(err, f"recipe {recipe}", schema) from None
        except ValidationError as err:
            raise UserError(f"recipe {recipe}: bad value for '{err.full_key}': {err.msg}") from None
        # OmegaConf's merge keeps a default where the recipe says ??? (it treats ??? as "no value"): put the
        # recipe's ??? back, so that a value the recipe requires is required.
        for key in OmegaConf.missing_keys(recipe_cfg):
            if "[" not in key:  # inside a list the ??? stays: a recipe's list replaces the default whole
                OmegaConf.update(cfg, key, MISSING, force_add=True)
    plain, added = _split_overrides(overrides)
    _allow_trainer_keys(cfg, _trainer_override_keys(plain), "the command line")
    with open_dict(cfg.model):
        present = set(cfg.model.keys())  # (setdefault would overwrite a ??? value)
        for key in MODEL_KEYS:
            if key not in present:
                cfg.model[key] = None
    OmegaConf.set_struct(cfg, True)
    try:
        if added:
            # Open `model` for the additions only, then let it inherit struct mode again.
            OmegaConf.set_struct(cfg.model, False)
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(added))
            OmegaConf.set_struct(cfg.model, None)
        if plain:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(plain))
    except ConfigKeyError as err:
        raise _unknown_key_error(err, "command-line overrides", cfg, overrides) from None
    except ValidationError as err:
        raise UserError(f"override for '{err.full_key}': {err.msg}") from None
    OmegaConf.set_struct(cfg, True)
    _apply_deprecated(cfg, overrides)
    if check_missing:
        missing_keys(cfg, ["run.name", "run.seed"])
        require(cfg, ["run.name", "run.seed"])
    return cfg


def require(cfg: DictConfig, keys: list[str]) -> None:
    """Fail with a clear message when any of ``keys`` is missing (``???``) or null."""
    for key in keys:
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except MissingMandatoryValue:
            value = None
        except OmegaConfBaseException as err:
            raise UserError(f"config key '{key}' cannot be resolved: {err}") from None
        if value is None:
            raise UserError(f"config key '{key}' is required; set it in the recipe or pass {key}=VALUE")


@contextmanager
def _environment_kept():
    """While active, ``${oc.env:NAME}`` resolves to its own text: a secret read from the environment stays an
    interpolation (in every value derived from it too) instead of being written out."""
    from omegaconf.basecontainer import BaseContainer

    saved = BaseContainer._resolvers.get("oc.env")

    def keep(name, default=_NO_DEFAULT):
        return "${oc.env:" + str(name) + ("" if default is _NO_DEFAULT else f",{default}") + "}"

    OmegaConf.register_new_resolver("oc.env", keep, replace=True)
    try:
        yield
    finally:
        BaseContainer._resolvers["oc.env"] = saved


_NO_DEFAULT = object()


def resolved(cfg: DictConfig, allow_missing: bool = False, keep_secrets: bool = False) -> DictConfig:
    """A resolved copy (interpolations replaced by values), still checked for errors.

    ``allow_missing`` keeps unset ``???`` values as they are (a stage saving the config it ran with need not set
    keys only another stage reads); otherwise every one of them is named in one error. ``keep_secrets`` leaves
    ``${oc.env:...}`` (API keys, tokens) as interpolations: for every config that is written or logged.
    """
    if not allow_missing:
        missing_keys(cfg)
    try:
        with _environment_kept() if keep_secrets else nullcontext():
            container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=not allow_missing)
    except MissingMandatoryValue as err:
        raise UserError(f"config key '{err.full_key}' is required (it is ??? in the recipe)") from None
    except OmegaConfBaseException as err:
        raise UserError(f"config cannot be resolved: {err}") from None
    return OmegaConf.create(container)


def save_config(cfg: DictConfig, path: str | Path) -> Path:
    """Write the resolved config beside an output, so the output says how it was made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(resolved(cfg, allow_missing=True, keep_secrets=True)))
    return path


def add_config_args(parser, required: bool = True) -> None:
    """The shared CLI shape: ``--config RECIPE`` then ``key=value`` overrides."""
    parser.add_argument("--config", required=required,
                        help="recipe: a YAML file, or a shipped one by name (nemotron/full_finetune, ...)")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dotlist)")
