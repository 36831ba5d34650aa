"""Shared fixtures: generated corpora, tiny trained models and an exported bundle, each built once per session.

Everything is real (espeak-ng speech, NeMo, Lhotse, Lightning, W&B offline, ONNX Runtime, sherpa-onnx); the models
are the demo recipe shrunk so that the suite trains them in seconds on 2 CPU cores. Tiers: `make test` runs every
test not marked ``e2e`` (the fast tier); `make test-e2e` runs the ``e2e`` ones (kills and resumes, DDP, a fresh
venv, the browser, int8 variants, long utterances, a flooding client and SIGTERM to a server); ``slow`` tests run
only with ``--run-slow``.
STREAMTUNE_TEST_SEED and STREAMTUNE_TEST_THREADS (tests/helpers.py) move every corpus, run and thread count.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bench.geometry import TINY
from tests.helpers import DEMO_RECIPE, SECRET, SEED_OFFSET, TENWORDS, THREADS, cached_build, seeded, value_of


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (minutes each)")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow (or `make test-slow`) to run")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)


def pytest_report_header(config):
    return f"streamtune test seed offset {SEED_OFFSET}, torch threads {THREADS or 'default'}"


@pytest.fixture(scope="session", autouse=True)
def _suite_settings():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if THREADS:
        import torch

        torch.set_num_threads(THREADS)


def _threads() -> list[str]:
    return [f"trainer.num_threads={THREADS}"] if THREADS else []


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """48 / 6 / 8 generated utterances of 2-4 words, written as the target model writes (capitals, punctuation,
    digits, [noise] tags), and a 96-piece tokenizer trained on the training split."""
    from streamtune.data.synthetic import prepare_synthetic
    from streamtune.data.train_tokenizer import train_tokenizer

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run `make setup` (the test suite generates its speech with it)")
    root = tmp_path_factory.mktemp("corpus")
    prepare_synthetic(root, num_train=48, num_dev=6, num_test=8, seed=seeded(7), min_words=2, max_words=4)
    train_tokenizer([root / "cuts_train.jsonl.gz"], root / "tokenizer", vocab_size=96)
    return root


@pytest.fixture(scope="session")
def lower_cuts(corpus) -> Path:
    """The corpus' training cuts with lower-case, unpunctuated transcripts: data that writes neither."""
    from lhotse import CutSet

    from streamtune.data.text import normalise_text

    cuts = CutSet.from_file(corpus / "cuts_train.jsonl.gz").to_eager()
    for cut in cuts:
        sup = cut.supervisions[0]
        sup.text = normalise_text(sup.text.replace("[noise]", ""), lowercase=True, strip_punctuation=True)
    path = corpus.parent / f"{corpus.name}-lower" / "cuts_train.jsonl.gz"
    path.parent.mkdir()
    cuts.to_file(path)
    return path


@pytest.fixture(scope="session")
def timed_corpus(tmp_path_factory) -> Path:
    """A few utterances spoken word by word, with every word's start and end (for emission delay)."""
    from streamtune.data.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("timed")
    prepare_synthetic(root, num_train=0, num_dev=0, num_test=4, seed=seeded(11), min_words=2, max_words=4,
                      id_prefix="timed", word_timings=True)
    return root


@pytest.fixture(scope="session")
def tiny_overrides(corpus, tmp_path_factory) -> list[str]:
    """The demo recipe shrunk to the tiny geometry on the corpus: what every tiny training run starts from."""
    out = tmp_path_factory.mktemp("runs")
    return [
        f"data.train={corpus / 'cuts_train.jsonl.gz'}",
        f"data.dev={corpus / 'cuts_dev.jsonl.gz'}",
        f"data.test={corpus / 'cuts_test.jsonl.gz'}",
        f"model.tokenizer_dir={corpus / 'tokenizer'}",
        "data.num_workers=0",
        "data.batch_duration_s=20",
        f"run.output_dir={out}",
        f"run.seed={seeded(1234)}",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "eval.batch_size=3",
        "eval.latency_streams=[1,2]",
        "eval.latency_audio_s=2",
        f"export.dist_dir={out / 'dist'}",
        *_threads(),
        *TINY,
    ]


@pytest.fixture(scope="session")
def train_tiny(tiny_overrides):
    """``train_tiny(out_dir, *overrides, recipe=DEMO_RECIPE)``: the real train.py on the tiny overrides plus
    ``overrides`` (later ones win), writing under ``out_dir``; returns the run dir (``latest``)."""
    from streamtune.stages import train

    def run(out_dir: Path, *overrides: str, recipe: Path = DEMO_RECIPE) -> Path:
        assert train.main(["--config", str(recipe), *tiny_overrides, f"run.output_dir={out_dir}", *overrides]) == 0
        return next(Path(out_dir).glob("*/latest")).resolve()

    return run


@pytest.fixture(scope="session")
def trained_run(train_tiny, tmp_path_factory) -> Path:
    """The session's tiny run, read by many tests: 6 steps with validation every 3, EMA weights, TensorBoard and
    W&B (offline, the real client) beside the CSV log, and a secret in the config that must stay a reference."""
    os.environ["STREAMTUNE_TEST_SECRET"] = SECRET
    try:
        return train_tiny(tmp_path_factory.mktemp("tiny_run"), "trainer.ema_decay=0.5", "logger.tensorboard=true",
                          "logger.wandb_mode=offline", "export.hotwords=${oc.env:STREAMTUNE_TEST_SECRET}")
    finally:
        del os.environ["STREAMTUNE_TEST_SECRET"]


@pytest.fixture(scope="session")
def trained_model(trained_run):
    from streamtune.model.build import load_model

    return load_model(trained_run / "final.nemo")


def _words_overrides(root: Path) -> list[str]:
    return [
        f"data.train={root / 'cuts_train.jsonl.gz'}", f"data.dev={root / 'cuts_dev.jsonl.gz'}",
        f"data.test={root / 'cuts_test.jsonl.gz'}", f"model.tokenizer_dir={root / 'tokenizer'}",
        "data.num_workers=0", "data.batch_duration_s=15", f"run.output_dir={root / 'runs'}", "run.name=tenwords",
        f"run.seed={seeded(1234)}", "trainer.max_steps=500", "trainer.val_check_interval=500",
        "trainer.enable_progress_bar=false", "model.optim.sched.warmup_steps=30", "eval.batch_size=4",
        "eval.latency_streams=[1]", "eval.latency_audio_s=1", f"export.dist_dir={root / 'dist'}",
        "export.int8=false", "export.parity_max_utts=20", *_threads(),
    ]


def _build_tenwords(root: Path) -> None:
    """The corpus, its tokenizer, train.py, evaluate.py (into the run's eval/, where package finds results.json)
    and `export all` (the int8 variants are the second tier's: tests/test_export_int8.py)."""
    from streamtune.data.synthetic import prepare_synthetic
    from streamtune.data.train_tokenizer import train_tokenizer
    from streamtune.stages import evaluate, train
    from streamtune.stages.export.__main__ import main as export

    # 20 dev utterances (~70 words; export checks 20): one word moves a WER by ~1.4 points.
    prepare_synthetic(root, num_train=240, num_dev=20, num_test=12, seed=seeded(1), min_words=2, max_words=4,
                      words=TENWORDS, voices=["en-us"], id_prefix="tenwords")
    train_tokenizer([root / "cuts_train.jsonl.gz"], root / "tokenizer", vocab_size=64)
    overrides = _words_overrides(root)
    assert train.main(["--config", str(DEMO_RECIPE), *overrides]) == 0
    model = str(root / "runs" / "tenwords" / "latest" / "final.nemo")
    assert evaluate.main(["--config", str(DEMO_RECIPE), "--model", model, *overrides]) == 0
    assert export(["all", "--config", str(DEMO_RECIPE), "--model", model, *overrides, "export.tarball=true"]) == 0


@pytest.fixture(scope="session")
def words_overrides() -> list[str]:
    """A ten-word task one voice reads, written as the target model writes, and the demo's own model: it learns the
    task in 500 steps of 15 s batches (3.4-12 % WER on 100 held-out sentences over three seeds; 300 steps, or the
    tiny geometry, left one seed in three at 20-90 %), so checks that need a model that really recognises speech
    (sherpa-onnx against our decoding, serving, boosting, word times) have one; trained, evaluated and exported
    once, and kept (tests/helpers.py: cached_build) until the code, the recipe or the pins change."""
    return _words_overrides(cached_build("tenwords", _build_tenwords, SEED_OFFSET, THREADS))


@pytest.fixture(scope="session")
def words_run(words_overrides) -> Path:
    return (Path(value_of(words_overrides, "run.output_dir")) / "tenwords" / "latest").resolve()


@pytest.fixture(scope="session")
def words_model(words_run):
    from streamtune.model.build import load_model

    return load_model(words_run / "final.nemo")


@pytest.fixture(scope="session")
def bundle(words_overrides) -> Path:
    """The ten-word model's exported bundle (evaluated first: the card has its WER table)."""
    return Path(value_of(words_overrides, "export.dist_dir")) / "tenwords"


RNNT = "nemo.collections.asr.models.EncDecRNNTBPEModel"


@pytest.fixture(scope="session")
def make_base(corpus):
    """``make_base(out, target=RNNT)``: the target's shape in miniature as a fresh .nemo: EncDecRNNTBPEModel,
    128 mel features, normalize "NA", the four chunk modes, the corpus' tokenizer (capitals, punctuation, digits),
    NeMo's default RNN-T loss with FastEmit; ``target`` another class (the demo's hybrid RNNT-CTC one)."""
    def make(out: Path, target: str = RNNT) -> Path:
        import torch
        from omegaconf import open_dict

        from streamtune.config.loading import load_config
        from streamtune.model.build import build_model

        overrides = [*TINY, "model.preprocessor.features=128", f"model.tokenizer_dir={corpus / 'tokenizer'}",
                     f"data.train={corpus / 'cuts_train.jsonl.gz'}", "data.dev=null", "model.loss.loss_name=default",
                     "+model.loss.warprnnt_numba_kwargs.fastemit_lambda=0.001", f"run.seed={seeded(1234)}",
                     f"model.target={target}", "model.att_context_probs=null"]
        torch.manual_seed(seeded(0))
        model = build_model(load_config(DEMO_RECIPE, overrides), log=lambda _: None)
        if target == RNNT:  # the demo recipe's CTC head is the hybrid class's only
            with open_dict(model.cfg):
                del model.cfg["aux_ctc"]
        model.save_to(str(out))
        return out

    return make


@pytest.fixture(scope="session")
def base_nemo(make_base, tmp_path_factory) -> Path:
    return make_base(tmp_path_factory.mktemp("base") / "base.nemo")


@pytest.fixture(scope="session")
def lower_tokenizer(lower_cuts) -> Path:
    """A 48-piece tokenizer that writes lower-case words only: another vocabulary than the corpus'."""
    from streamtune.data.train_tokenizer import train_tokenizer

    return train_tokenizer([lower_cuts], lower_cuts.parent / "tokenizer", vocab_size=48)


@pytest.fixture(scope="session")
def finetune_overrides(corpus) -> list[str]:
    """CPU-sized overrides for the real recipes under recipes/nemotron/ (add run.output_dir)."""
    return [f"data.train={corpus / 'cuts_train.jsonl.gz'}", f"data.dev={corpus / 'cuts_dev.jsonl.gz'}",
            "data.batch_duration_s=20", "data.num_buckets=0", "data.num_workers=0", "trainer.max_steps=3",
            "trainer.val_check_interval=3", "trainer.accelerator=cpu", "trainer.log_every_n_steps=1",
            "trainer.enable_progress_bar=false", "logger.wandb_mode=disabled", "eval.batch_size=3",
            "model.optim.sched.warmup_steps=1", "model.optim.lr=2e-3", f"run.seed={seeded(1234)}",
            # NeMo's default RNN-T loss (the recipes') walks the lattice in Python: its pytorch loss is quicker
            # on 2-4 word clips.
            "+model.loss.loss_name=pytorch", *_threads()]


@pytest.fixture(scope="session")
def finetune(finetune_overrides):
    """``finetune(recipe_name, start_point, out_dir, *overrides)``: the real train.py on recipes/nemotron/<recipe>
    from ``start_point``; returns the run dir."""
    from streamtune.stages import train
    from tests.helpers import NEMOTRON

    def run(recipe: str, start: Path, out_dir: Path, *overrides: str) -> Path:
        assert train.main(["--config", str(NEMOTRON / recipe), f"model.init_from={start}", *finetune_overrides,
                           f"run.output_dir={out_dir}", *overrides]) == 0
        return next(Path(out_dir).glob("*/latest")).resolve()

    return run
