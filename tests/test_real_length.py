"""Real-length speech: the loss in training, duration bucketing and what it skips, long generated utterances."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import DEMO_RECIPE, seeded


def _losses(run_root: Path) -> list[float]:
    metrics = next(run_root.glob("*/latest/logs/metrics.csv"))
    return [float(r["train_loss"]) for r in csv.DictReader(open(metrics)) if r.get("train_loss")]


def test_twenty_steps_with_streamtune_loss_equal_nemo_pytorch_loss(trained_run, train_tiny, tmp_path):
    """Fine-tuning the tiny demo model for 20 steps on a tiny batch: the same losses with either loss."""
    common = [f"model.init_from={trained_run / 'final.nemo'}", "data.dev=null", "data.batch_duration_s=5",
              "trainer.max_steps=20", "trainer.val_check_interval=20", "model.optim.sched.warmup_steps=2"]
    for loss in ("pytorch", "streamtune"):
        train_tiny(tmp_path / loss, *common, f"model.loss.loss_name={loss}")
    theirs, ours = _losses(tmp_path / "pytorch"), _losses(tmp_path / "streamtune")
    assert len(ours) == len(theirs) == 20
    relative = [abs(a - b) / max(1.0, abs(b)) for a, b in zip(ours, theirs)]
    # The same loss to float32 rounding: the first steps agree to 1e-5. The rounding then moves the weights
    # apart a little at every update (AdamW divides by tiny second moments), so later steps agree to 1e-3.
    assert max(relative[:3]) <= 1e-5 and max(relative) <= 1e-3, list(zip(ours, theirs))
    assert ours[-1] < ours[0], "and the model learns"


@pytest.fixture(scope="module")
def odd_cuts(corpus, tmp_path_factory) -> Path:
    """The corpus with one very long cut (the longest, declared past the bound) and one cut of 0.05 s."""
    from lhotse import CutSet

    cuts = CutSet.from_file(corpus / "cuts_train.jsonl.gz").to_eager()
    longest = max(cuts, key=lambda c: c.duration)
    shortest = min(cuts, key=lambda c: c.duration)
    out = tmp_path_factory.mktemp("odd")
    shortest_cut = shortest.truncate(duration=0.05)
    cuts = CutSet.from_cuts([c for c in cuts if c.id != shortest.id] + [shortest_cut])
    cuts.to_file(out / "cuts_train.jsonl.gz")
    (out / "bounds.json").write_text(json.dumps({"longest": longest.id, "longest_s": longest.duration,
                                                 "short": shortest_cut.id}))
    return out


def test_cuts_outside_the_duration_bounds_are_skipped_counted_and_named(odd_cuts, train_tiny, tmp_path, capsys):
    bounds = json.loads((odd_cuts / "bounds.json").read_text())
    max_s = bounds["longest_s"] - 0.01
    train_tiny(tmp_path, f"data.train={odd_cuts / 'cuts_train.jsonl.gz'}", f"data.max_duration_s={max_s}",
               "trainer.max_steps=2")
    out = capsys.readouterr().out
    assert "46 of 48 cuts" in out and "1 longer than max duration" in out and "1 shorter than min duration" in out
    assert bounds["longest"] in out and "never truncated" in out
    skipped = [json.loads(line) for line in (tmp_path / "tiny_cpu/latest/skipped.jsonl").read_text().splitlines()]
    assert {(s["id"], s["reason"]) for s in skipped} == {(bounds["longest"], "longer_than_max_duration"),
                                                         (bounds["short"], "shorter_than_min_duration")}
    assert "46 of 48" in (tmp_path / "tiny_cpu/latest/model_setup.txt").read_text()


def test_empty_transcripts_stop_training_unless_allowed(corpus, tiny_overrides, train_tiny, tmp_path, capsys):
    from lhotse import CutSet

    from streamtune.stages import train

    cuts = CutSet.from_file(corpus / "cuts_train.jsonl.gz").to_eager()
    cuts[3].supervisions[0].text = "  "
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    args = [f"data.train={tmp_path / 'cuts.jsonl.gz'}", "trainer.max_steps=1", f"run.output_dir={tmp_path / 'runs'}"]
    assert train.main(["--config", str(DEMO_RECIPE), *tiny_overrides, *args]) == 2
    err = capsys.readouterr().err
    assert "1 cuts with an empty transcript" in err and cuts[3].id in err and "data.allow_empty_text=true" in err
    assert not (tmp_path / "runs").exists(), "refused before any run dir exists"
    train_tiny(tmp_path / "runs", *args, "data.allow_empty_text=true")


def test_bucketing_is_on_by_default_with_equal_count_bins(corpus, tiny_overrides):
    from omegaconf import OmegaConf

    from streamtune.config.loading import load_config
    from streamtune.config.schema import RecipeConfig
    from streamtune.data.survey import survey_training_data
    from streamtune.model.nemo_config import dataset_configs

    assert OmegaConf.structured(RecipeConfig).data.num_buckets == 30, "on unless a recipe says otherwise"
    cfg = load_config(DEMO_RECIPE, [*tiny_overrides, "data.batch_duration_s=10", "data.num_buckets=30"])
    train_ds = dataset_configs(cfg, 16000)["train_ds"]
    survey = survey_training_data(cfg.data)
    bins = train_ds["bucket_duration_bins"]
    # 48 cuts of ~100 s in batches of 10 s: at most 5 buckets (two batches each), equal numbers of cuts per bucket.
    assert train_ds["use_bucketing"] and train_ds["num_buckets"] == len(bins) + 1 <= 5
    assert not train_ds["concurrent_bucketing"], "a background thread would make batch order timing-dependent"
    counts = [sum(lo < d <= hi for d in survey.durations)
              for lo, hi in zip([0, *bins], [*bins, float("inf")])]
    assert max(counts) - min(counts) <= 2, counts
    # Too little data for two buckets: bucketing is left off rather than making single-cut buckets.
    assert "use_bucketing" not in dataset_configs(load_config(DEMO_RECIPE, [*tiny_overrides,
                                                                            "data.batch_duration_s=60"]),
                                                                            16000)["train_ds"]


def test_paragraph_pauses_are_spoken_and_written_where_the_style_writes_them():
    """A long utterance is read in phrases (a pause, a comma for espeak-ng, every 6-14 words): the written style
    writes those commas, the plain one only speaks them."""
    from streamtune.data.synthetic import PHRASE_WORDS, plan_corpus, spoken_text

    plain = plan_corpus({"test": 3}, seed=2, min_words=25, max_words=110, style="plain")[0]
    spoken = spoken_text(plain)
    assert "," in spoken and "," not in plain.text and spoken.replace(",", "") == plain.text
    written = plan_corpus({"test": 3}, seed=2, min_words=25, max_words=110)[0]
    assert spoken_text(written) == written.text and written.text.count(",") == spoken.count(",")
    short = plan_corpus({"test": 1}, seed=2, min_words=3, max_words=PHRASE_WORDS, style="plain")[0]
    assert spoken_text(short).count(",") == 0


@pytest.mark.e2e
def test_paragraph_length_speech_is_generated_and_streams_like_offline(trained_model, tmp_path):
    """A ~60 s generated utterance decoded chunk by chunk with only its features in memory: offline's tokens."""
    from lhotse import CutSet

    from streamtune.data.reading import load_utterances
    from streamtune.data.synthetic import prepare_synthetic
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.runner import StreamingRunner

    prepare_synthetic(tmp_path, num_train=0, num_dev=0, num_test=1, seed=seeded(4), min_words=170, max_words=170,
                      voices=["en-us"], id_prefix="para")
    cut = next(iter(CutSet.from_file(tmp_path / "cuts_test.jsonl.gz")))
    assert cut.duration >= 50, cut.duration
    feats = [StreamingRunner(trained_model).features(u.audio) for u in load_utterances(tmp_path / "cuts_test.jsonl.gz")]
    mode = next(m for m in chunk_modes(trained_model) if m.chunk_ms == 160)
    runner = StreamingRunner(trained_model, batch_size=1)
    streamed, offline = runner.streaming(mode, feats), runner.offline(mode, feats)
    assert streamed.tokens == offline.tokens
    assert len(streamed.step_times) >= cut.duration / 0.16 - 2


_HEAP_PROBE = """
import ctypes, sys
from streamtune.model.runtime import set_mmap_threshold
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "set":
    assert set_mmap_threshold(4)
size = 6 << 20
libc.free(libc.malloc(size))  # freeing a mapped block raises glibc's own threshold above it
before = libc.mallinfo2().hblkhd
block = libc.malloc(size)
print(libc.mallinfo2().hblkhd - before >= size)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc only")
def test_evaluate_mmap_threshold_keeps_large_blocks_out_of_the_heap():
    """eval.mmap_threshold_mib: with it, a 6 MiB block is mapped again after one was freed (so freeing it returns
    it to the system); without it glibc raises its threshold and serves the block from the heap, where batches of
    varying shapes fragment it (the peak memory creep measured in bench/evaluate_scale.py)."""
    def mapped(arg):
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, arg], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)
        return out.stdout.strip()

    assert mapped("set") == "True"
    assert mapped("default") == "False"
