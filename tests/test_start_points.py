"""Start points users reach for: a hub name resolved through NeMo's from_pretrained and a local Hugging Face cache
(offline), partial initialisation (model.init_include / init_exclude), and the transcript-style guard."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import NEMOTRON, REPO


def _hf_cache(cache: Path, repo_id: str, nemo: Path) -> Path:
    """The layout huggingface_hub writes when it downloads ``<name>.nemo`` of ``repo_id``: a content-addressed
    blob, a snapshot per commit linking to it, and refs/main naming the commit."""
    folder = cache / f"models--{repo_id.replace('/', '--')}"
    data = nemo.read_bytes()
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    commit = hashlib.sha1(data).hexdigest()
    snapshot = folder / "snapshots" / commit / f"{repo_id.split('/')[-1]}.nemo"
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def _train(args: list[str], cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAMTUNE_", "HF_"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf_home"))
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.e2e
def test_hub_name_resolves_from_the_hf_cache_offline(base_nemo, finetune_overrides, tmp_path):
    """In fresh processes: huggingface_hub reads HF_HUB_OFFLINE and its cache path when it is imported."""
    cache = tmp_path / "hub"
    cached = _hf_cache(cache, "acme/tiny-streaming", base_nemo)
    common = ["--config", str(NEMOTRON / "full_finetune.yaml"), *finetune_overrides, "trainer.max_steps=1",
              f"run.output_dir={tmp_path / 'runs'}"]
    done = _train([*common, "model.init_from=acme/tiny-streaming"], cache)
    assert done.returncode == 0, done.stderr[-3000:]
    setup = next((tmp_path / "runs").glob("*/latest/model_setup.txt")).read_text()
    assert f"init_from acme/tiny-streaming: {cached} (Hugging Face cache)" in setup

    missing = _train([*common, "model.init_from=acme/not-cached"], cache)
    assert missing.returncode == 2
    error = [line for line in missing.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "\n" not in error[0], missing.stderr  # one line, whatever NeMo logs around it
    assert str(cache) in error[0] and "HF_HUB_OFFLINE=1" in error[0]
    assert "`hf download acme/not-cached not-cached.nemo`" in error[0]


@pytest.fixture(scope="module")
def trained_base(base_nemo, tmp_path_factory) -> Path:
    """base.nemo with every weight moved: a fresh initialisation cannot coincide with it."""
    from streamtune.model.build import load_model, save_model

    model = load_model(base_nemo)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    return save_model(model, tmp_path_factory.mktemp("moved") / "moved.nemo")


def _partial(trained_base, finetune_overrides, tmp_path, *extra):
    from lightning.pytorch import seed_everything

    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model

    cfg = load_config(NEMOTRON / "full_finetune.yaml", [f"model.init_from={trained_base}", *finetune_overrides,
                                                        f"run.output_dir={tmp_path}", *extra])
    seed_everything(cfg.run.seed)
    notes = []
    return build_model(cfg, log=notes.append), "\n".join(notes)


def test_partial_init_keeps_included_modules_bitwise(trained_base, finetune_overrides, tmp_path):
    from streamtune.model.build import load_model

    source = load_model(trained_base).state_dict()
    model, notes = _partial(trained_base, finetune_overrides, tmp_path, "model.init_include=[encoder,preprocessor]")
    state = model.state_dict()
    encoder = [k for k in state if k.startswith("encoder.")]
    assert encoder and all(torch.equal(state[k], source[k]) for k in encoder)
    fresh = [k for k, v in model.named_parameters() if k.startswith(("decoder.", "joint."))]
    assert fresh and all(not torch.equal(state[k], source[k]) for k in fresh), "decoder and joint re-initialised"
    assert "encoder: " in notes and "(loaded)" in notes and "decoder: 0 of" in notes and "(fresh)" in notes

    # The same split said the other way round, and an excluded module may change shape.
    model, notes = _partial(trained_base, finetune_overrides, tmp_path, "model.init_exclude=[decoder,joint]",
                            "+model.joint.jointnet.joint_hidden=24")
    assert model.joint.joint_net[-1].in_features == 24
    assert all(torch.equal(model.state_dict()[k], source[k]) for k in encoder)


def test_partial_init_errors_name_the_prefix(trained_base, finetune_overrides, tmp_path):
    from streamtune.errors import UserError

    with pytest.raises(UserError, match="model.init_include 'encodr' names nothing.*encoder"):
        _partial(trained_base, finetune_overrides, tmp_path, "model.init_include=[encodr]")
    with pytest.raises(UserError, match="keeps joint.* with shape .* the recipe's model has"):
        _partial(trained_base, finetune_overrides, tmp_path, "model.init_include=[joint]",
                 "+model.joint.jointnet.joint_hidden=24")


def test_style_guard_stops_lower_case_data_over_a_pnc_start_point(base_nemo, corpus, lower_cuts, finetune_overrides,
                                                                  tmp_path, capsys):
    from streamtune.data.style import TextStyle
    from streamtune.stages import train

    overrides = [*finetune_overrides, f"data.train={lower_cuts}", f"run.output_dir={tmp_path / 'runs'}"]
    args = ["--config", str(NEMOTRON / "full_finetune.yaml"), f"model.init_from={base_nemo}", *overrides]
    assert train.main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and len(error.splitlines()) == 1
    assert "writes capitals and punctuation, but data.train does not (0.0% with capitals, 0.0% with punctuation)" \
        in error
    assert "data.allow_style_change=true" in error and "recipes/nemotron/replay_mix.yaml" in error
    assert not (tmp_path / "runs").exists(), "refused before a run dir exists"

    # Matching data, a replay mix with enough PnC in it, or an explicit choice: no stop.
    from streamtune.config.loading import load_config
    from streamtune.model.build import check_model_config

    cased = corpus / "cuts_train.jsonl.gz"
    for extra in ([f"data.train={cased}"], [f"data.train=[[{lower_cuts},0.75],[{cased},0.25]]"],
                  ["data.allow_style_change=true"]):
        check_model_config(load_config(NEMOTRON / "full_finetune.yaml",
                                       [f"model.init_from={base_nemo}", *overrides, *extra]))
    # A mix with too little PnC still stops, naming its share: 3 % of the corpus' share of utterances with capitals.
    from lhotse import CutSet

    from streamtune.errors import UserError

    style = TextStyle()
    for cut in CutSet.from_file(cased):
        style.add(cut.supervisions[0].text)
    with pytest.raises(UserError, match=f"{100 * 0.03 * style.share('capitals'):.1f}% with capitals"):
        check_model_config(load_config(NEMOTRON / "full_finetune.yaml", [
            f"model.init_from={base_nemo}", *overrides, f"data.train=[[{lower_cuts},0.97],[{cased},0.03]]"]))
    # The replay-mix recipe is that mix, ready to fill in.
    cfg = load_config(NEMOTRON / "replay_mix.yaml", [f"model.init_from={base_nemo}", *overrides,
                                                     f"data.train=[[{lower_cuts},0.75],[{cased},0.25]]"])
    check_model_config(cfg)


def test_data_prep_report_states_the_transcript_style(corpus, lower_cuts, tmp_path):
    from lhotse import CutSet

    from streamtune.stages.data_prep.__main__ import main as prep

    cased = corpus / "cuts_train.jsonl.gz"
    texts = [c.supervisions[0].text for c in CutSet.from_file(cased)]
    with_capitals = sum(any(ch.isupper() for ch in t) for t in texts) / len(texts)
    assert with_capitals > 0.5, "precondition: the corpus is written with capitals"
    for cuts, out, capitals, punctuation in ((cased, tmp_path / "cased", with_capitals, 1.0),
                                             (lower_cuts, tmp_path / "lower", 0.0, 0.0)):
        assert prep(["lhotse", "--cuts", str(cuts), "--out", str(out), "--no-audio-check"]) == 0
        style = json.loads((out / "report_train.json").read_text())["style"]
        assert style["with_capitals"] == round(capitals, 4) and style["with_punctuation"] == punctuation
        assert style["utterances"] == 48
        assert "Transcript style: " in (out / "report_train.md").read_text()
