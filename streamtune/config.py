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

from omegaconf import MISSING, DictConfig, OmegaConf
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
    num_workers: int = 0
    shuffle_buffer_size: int = 10000


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


@dataclass
class EvalConfig:
    # Chunk modes to evaluate, in ms; empty = every att_context_size the model was trained with.
    chunk_ms: List[int] = field(default_factory=list)
    # How each chunk mode is decoded: "streaming" (chunk by chunk, caches carried) and/or "offline".
    decodes: List[str] = field(default_factory=lambda: ["streaming", "offline"])
    # Deprecated spelling of eval.decodes (still read, with a warning).
    modes: Optional[List[str]] = None
    # Utterances decoded together as concurrent streams (results do not depend on it).
    batch_size: int = 8
    # Gates (WER points, %; --max-wer / --max-regression override): exit 1 when a candidate's streaming WER on
    # any test set and chunk size is above max_wer, or above the baseline's by more than max_regression.
    max_wer: Optional[float] = None
    max_regression: Optional[float] = None
    # Deltas above this many WER points are flagged as regressions in the report (the gate is max_regression).
    regression_tolerance: float = 0.5
    # Per-step compute is timed at these numbers of concurrent streams, each stream latency_audio_s long.
    latency_streams: List[int] = field(default_factory=lambda: [1, 4, 16])
    latency_audio_s: float = 8.0
    output_dir: Optional[str] = None


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
    # int8 dynamic quantisation of the ONNX files, and the WER rise (points, %) it may cost on the parity set.
    int8: bool = True
    int8_max_wer_delta: float = 2.0
    # sherpa-onnx decodes the parity set from the exported files; its WER may differ from our ONNX
    # streaming WER by this many points at most.
    sherpa_check: bool = True
    sherpa_max_wer_delta: float = 2.0
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


def _apply_deprecated(cfg: DictConfig) -> None:
    """Copy each deprecated key's value to its new key (warning once per key); both set differently is an error."""
    import sys

    defaults = OmegaConf.structured(RecipeConfig)
    for old, new in DEPRECATED_KEYS:
        value = OmegaConf.select(cfg, old)
        if value is None:
            continue
        current = OmegaConf.select(cfg, new)
        if current not in (None, OmegaConf.select(defaults, new)) and current != value:
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
        recipe_cfg = _read_recipe(Path(recipe))
        try:
            cfg = OmegaConf.merge(schema, recipe_cfg)
        except ConfigKeyError as err:
            raise _unknown_key_error(err, f"recipe {recipe}", schema) from None
        except ValidationError as err:
            raise UserError(f"recipe {recipe}: bad value for '{err.full_key}': {err.msg}") from None
    plain, added = _split_overrides(overrides)
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
    _apply_deprecated(cfg)
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
    parser.add_argument("--config", required=required, help="recipe YAML (see recipes/)")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dotlist)")
