"""The recipe schema: every section's keys, types and defaults, with what each means.

A recipe (and every ``key=value`` override) is merged onto :class:`RecipeConfig` in struct mode by
``streamtune.config.loading``, so a key outside this schema is an error. The ``model`` section is NeMo's own model
config, passed through untouched apart from :data:`MODEL_KEYS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


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
    # Each a Lhotse cuts file (cuts_<split>.jsonl.gz) or Shar dir written by `python -m data_prep`; data.train
    # may also be the <out>/nemo/<split> dir of `data_prep nemo-tarred --keep-tars`, a NeMo tarred dataset
    # {manifest: 'd/manifest_*.json', tar: 'd/audio_*.tar'} (local files) or a weighted mix of any of these:
    # [[path or {manifest, tar}, weight], ...].
    train: Any = None
    dev: Optional[str] = None
    test: Optional[str] = None
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
    # The survey before training (durations for the buckets, skipped cuts, empty transcripts, transcript style)
    # reads at most this many cuts' metadata per training input, from a random sample of its shards; 0 = all.
    survey_max_cuts: int = 200000
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
    # with the size of the test set (measured with and without it: BENCHMARKS.md, "Evaluation at scale").
    # 0 keeps glibc's default; at most 32 (glibc's limit).
    mmap_threshold_mib: int = 4


@dataclass
class ExportConfig:
    name: Optional[str] = None  # bundle name; default run.name
    dist_dir: str = "dist"
    # Parity set (the evidence every export gate decides on): a cuts file (default data.dev, else data.test, else
    # generated speech), its first utterances holding at least parity_min_words reference words (0: all of it),
    # at most parity_max_utts of them (0: no cap). 500 words make one word 0.2 WER points, a tenth of the 2-point
    # sherpa-onnx and int8 gates: two decoders must differ by ten words before a gate can fail, and the paired
    # bootstrap resolves a gate on it unless the difference is close to the margin (then: inconclusive, with the
    # words that would settle it).
    parity_cuts: Optional[str] = None
    parity_min_words: int = 500
    parity_max_utts: int = 0
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
class EndpointConfig:
    # When a stream's turn ends (streamtune/streaming/endpoint.py; evaluate.py on multi-turn test sets, the
    # server, bench/endpointing.py): "rules" (on the RNN-T's blanks), "eou" (the model's <EOU> token; the silence
    # rules stay as a fallback where set) or "none".
    method: str = "rules"
    # Seconds of audio: silence after speech that ends a turn; silence with nothing decoded after which a segment
    # restarts (null: a rule off); the longest a segment may run.
    trailing_silence_s: Optional[float] = 0.8
    leading_silence_s: Optional[float] = 2.4
    max_segment_s: float = 20.0
    eou_token: str = "<EOU>"
    # At an endpoint the decoder always starts afresh; this starts the encoder's caches afresh too (off: the
    # conversation's audio context carries on).
    reset_encoder: bool = False
    # Multi-turn scoring: a turn with no final within this long after its reference end is missed.
    miss_window_s: float = 2.0


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
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)


# Keys of ours inside the `model` section (everything else there is NeMo's own config). Always present (null
# when unset), so a recipe or the command line can set them without a '+'.
MODEL_KEYS = ("target", "init_from", "init_include", "init_exclude", "tokenizer_dir", "add_tokens",
              "att_context_sizes", "att_context_probs")


# Lightning Trainer arguments streamtune sets itself, with the key that sets them.
TRAINER_OWNED = {
    "default_root_dir": "run.output_dir", "max_epochs": "trainer.max_steps (training is step-driven)",
    "min_epochs": "trainer.max_steps", "max_steps": "trainer.max_steps",
    "limit_train_batches": "trainer.max_steps", "logger": "logger.*", "callbacks": "the trainer.* options",
    "plugins": "streamtune (atomic checkpoint writes)", "use_distributed_sampler": "streamtune (Lhotse shards data)",
    "check_val_every_n_epoch": "trainer.val_check_interval", "enable_checkpointing": "trainer.save_top_k",
}
