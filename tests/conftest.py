"""Shared fixtures: a generated corpus, a tokenizer and a tiny trained model, built once per session.

Everything is real (espeak-ng speech, NeMo, Lhotse, Lightning); the model is
the demo recipe shrunk so that the whole suite runs in minutes on 2 CPU cores.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from streamtune.geometry import TINY

REPO = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO / "recipes" / "demo" / "tiny_cpu.yaml"

def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests marked slow (minutes each)")


def pytest_collection_modifyitems(config, items):
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow (or `make test-slow`) to run")
    for item in items:
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)


@pytest.fixture(scope="session", autouse=True)
def _quiet_env():
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    from streamtune.stages.data_prep.synthetic import prepare_synthetic
    from streamtune.stages.data_prep.tokenizer import train_tokenizer

    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is not installed: run `make setup` (the test suite generates its speech with it)")
    root = tmp_path_factory.mktemp("corpus")
    prepare_synthetic(root, num_train=48, num_dev=6, num_test=8, seed=7, min_words=2, max_words=4)
    train_tokenizer([root / "cuts_train.jsonl.gz"], root / "tokenizer", vocab_size=48)
    return root


@pytest.fixture(scope="session")
def timed_corpus(tmp_path_factory) -> Path:
    """A few utterances spoken word by word, with every word's start and end (for emission delay)."""
    from streamtune.stages.data_prep.synthetic import prepare_synthetic

    root = tmp_path_factory.mktemp("timed")
    prepare_synthetic(root, num_train=0, num_dev=0, num_test=4, seed=11, min_words=2, max_words=4,
                      id_prefix="timed", word_timings=True)
    return root


@pytest.fixture(scope="session")
def tiny_overrides(corpus, tmp_path_factory) -> list[str]:
    out = tmp_path_factory.mktemp("runs")
    return [
        f"data.train={corpus / 'cuts_train.jsonl.gz'}",
        f"data.dev={corpus / 'cuts_dev.jsonl.gz'}",
        f"data.test={corpus / 'cuts_test.jsonl.gz'}",
        f"model.tokenizer_dir={corpus / 'tokenizer'}",
        "data.num_workers=0",
        "data.batch_duration_s=20",
        f"run.output_dir={out}",
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
        "trainer.log_every_n_steps=1",
        "trainer.enable_progress_bar=false",
        "eval.batch_size=3",
        "eval.latency_streams=[1,2]",
        "eval.latency_audio_s=2",
        f"export.dist_dir={out / 'dist'}",
        *TINY,
    ]


@pytest.fixture(scope="session")
def trained_run(tiny_overrides) -> Path:
    """Run the real train.py entry point on the tiny model; returns its run dir."""
    from streamtune.stages import train

    assert train.main(["--config", str(DEMO_RECIPE), *tiny_overrides]) == 0
    output_dir = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("run.output_dir="))
    return (Path(output_dir) / "tiny_cpu" / "latest").resolve()


@pytest.fixture(scope="session")
def trained_model(trained_run):
    from streamtune.models import load_model

    return load_model(trained_run / "final.nemo")


@pytest.fixture(scope="session")
def words_overrides(tmp_path_factory) -> list[str]:
    """A ten-word task one voice reads: the tiny geometry learns it in ~200 steps (~30 s), so checks that
    need a model that really recognises speech (sherpa-onnx vs our decoding) have one."""
    from streamtune.stages.data_prep.synthetic import prepare_synthetic
    from streamtune.stages.data_prep.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tenwords")
    # No number words: the Whisper normaliser would turn "three four" into "34", one word.
    words = "red green blue black white lamp door window chair table".split()
    # 20 dev utterances (~70 words; export checks 20): one word then moves a WER by ~1.4 points, under the
    # sherpa-onnx and int8 gates (2 points), instead of 2.4 on 12.
    prepare_synthetic(root, num_train=240, num_dev=20, num_test=12, seed=1, min_words=2, max_words=4, words=words,
                      voices=["en-us"], id_prefix="tenwords")
    train_tokenizer([root / "cuts_train.jsonl.gz"], root / "tokenizer", vocab_size=24)
    return [
        f"data.train={root / 'cuts_train.jsonl.gz'}", f"data.dev={root / 'cuts_dev.jsonl.gz'}",
        f"data.test={root / 'cuts_test.jsonl.gz'}", f"model.tokenizer_dir={root / 'tokenizer'}",
        "data.num_workers=0", "data.batch_duration_s=30", f"run.output_dir={root / 'runs'}", "run.name=tenwords",
        "trainer.max_steps=200", "trainer.val_check_interval=100", "trainer.enable_progress_bar=false",
        "model.optim.sched.warmup_steps=30", "eval.batch_size=4", "eval.latency_streams=[1]",
        "eval.latency_audio_s=1", f"export.dist_dir={root / 'dist'}",
        "model.encoder.n_layers=1", "model.encoder.d_model=64", "model.encoder.n_heads=2",
        "model.model_defaults.pred_hidden=64", "model.model_defaults.joint_hidden=64",
    ]


@pytest.fixture(scope="session")
def words_run(words_overrides) -> Path:
    from streamtune.stages import train

    assert train.main(["--config", str(DEMO_RECIPE), *words_overrides]) == 0
    output_dir = next(o.split("=", 1)[1] for o in words_overrides if o.startswith("run.output_dir="))
    return (Path(output_dir) / "tenwords" / "latest").resolve()



@pytest.fixture(scope="session")
def bundle(words_run, words_overrides) -> Path:
    """evaluate.py, then `export all`, on the tiny model that has learnt its ten words: an exported bundle."""
    from streamtune.stages import evaluate
    from streamtune.stages.export.__main__ import main

    model = str(words_run / "final.nemo")
    # evaluate.py first, into its default place (<model dir>/eval), where package finds results.json.
    assert evaluate.main(["--config", str(DEMO_RECIPE), "--model", model, *words_overrides]) == 0
    assert main(["all", "--config", str(DEMO_RECIPE), "--model", model, *words_overrides, "export.tarball=true"]) == 0
    dist = next(o.split("=", 1)[1] for o in words_overrides if o.startswith("export.dist_dir="))
    return Path(dist) / "tenwords"


@pytest.fixture(scope="session")
def cased_tokenizer(corpus, tmp_path_factory) -> Path:
    """A tokenizer trained on capitalised, punctuated versions of the corpus sentences."""
    from lhotse import CutSet

    from streamtune.stages.data_prep.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("cased")
    cuts = CutSet.from_file(corpus / "cuts_train.jsonl.gz").to_eager()
    marks = [".", "?", "!", ","]
    for i, cut in enumerate(cuts):
        text = cut.supervisions[0].text
        cut.supervisions[0].text = f"{text[:1].upper()}{text[1:]}{marks[i % 4]}"
    cuts.to_file(root / "cased.jsonl.gz")
    return train_tokenizer([root / "cased.jsonl.gz"], root / "tokenizer", vocab_size=64)


def _base(corpus, tokenizer: Path, out: Path, target: str | None = None) -> Path:
    from streamtune.config import load_config
    from streamtune.models import build_model

    overrides = [*TINY, "model.preprocessor.features=128", f"model.tokenizer_dir={tokenizer}",
                 f"data.train={corpus / 'cuts_train.jsonl.gz'}", "data.dev=null", "model.loss.loss_name=default",
                 "+model.loss.warprnnt_numba_kwargs.fastemit_lambda=0.001"]
    if target:
        overrides.append(f"model.target={target}")
        overrides += ["+model.aux_ctc.ctc_loss_weight=0.3", "+model.aux_ctc.use_cer=false",
                      "+model.aux_ctc.ctc_reduction=mean_batch",
                      "+model.aux_ctc.decoder._target_=nemo.collections.asr.modules.ConvASRDecoder",
                      "+model.aux_ctc.decoder.feat_in=32", "+model.aux_ctc.decoder.num_classes=-1",
                      "+model.aux_ctc.decoder.vocabulary=[]", "+model.aux_ctc.decoding.strategy=greedy"]
    model = build_model(load_config(DEMO_RECIPE, overrides), log=lambda _: None)
    model.save_to(str(out))
    return out


@pytest.fixture(scope="session")
def base_nemo(corpus, cased_tokenizer, tmp_path_factory) -> Path:
    return _base(corpus, cased_tokenizer, tmp_path_factory.mktemp("base") / "base.nemo")
