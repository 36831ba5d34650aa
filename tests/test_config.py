"""The config system: every recipe loads against the schema; typos are errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from streamtune.config.loading import load_config, resolved, save_config
from streamtune.errors import UserError
from tests.helpers import DEMO_RECIPE, REPO, one_line_error, run_entry

RECIPES = sorted((REPO / "recipes").rglob("*.yaml"))


def test_there_are_recipes():
    assert RECIPES, "no recipes found under recipes/"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_recipe_loads_against_the_schema(recipe):
    cfg = load_config(recipe)
    assert cfg.run.name and cfg.run.seed is not None
    resolved(cfg, allow_missing=True)  # every interpolation resolves (??? left for the command line)
    text = recipe.read_text().splitlines()
    assert text[0].startswith("#"), "a recipe opens with what it is for"
    assert any("python " in line or "make " in line for line in text[:15]), "a recipe names the command that runs it"


def test_override_applies_and_types_are_checked():
    cfg = load_config(REPO / "recipes/demo/tiny_cpu.yaml", ["trainer.max_steps=7", "model.encoder.n_layers=3"])
    assert cfg.trainer.max_steps == 7 and cfg.model.encoder.n_layers == 3
    with pytest.raises(UserError, match="trainer.max_steps"):
        load_config(REPO / "recipes/demo/tiny_cpu.yaml", ["trainer.max_steps=lots"])


@pytest.mark.parametrize("key", ["trainer.max_step=5", "model.encoder.n_layer=3", "runn.seed=1"])
def test_misspelt_override_names_the_key(key):
    with pytest.raises(UserError) as err:
        load_config(REPO / "recipes/demo/tiny_cpu.yaml", [key])
    assert key.split("=")[0] in str(err.value)


def test_misspelt_key_suggests_the_right_one():
    with pytest.raises(UserError, match="Did you mean trainer.max_steps"):
        load_config(REPO / "recipes/demo/tiny_cpu.yaml", ["trainer.max_step=5"])


def test_misspelt_key_in_recipe_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("# bad\nrun: {name: x, seed: 1}\ntrainer: {max_stepz: 3}\n")
    with pytest.raises(UserError, match="trainer.max_stepz"):
        load_config(bad)


def test_plus_adds_keys_inside_model_only():
    cfg = load_config(REPO / "recipes/demo/tiny_cpu.yaml", ["+model.encoder.new_knob=1"])
    assert cfg.model.encoder.new_knob == 1
    with pytest.raises(UserError, match="model.encoder.typo"):  # adding one key does not open the section
        load_config(REPO / "recipes/demo/tiny_cpu.yaml", ["+model.encoder.new_knob=1", "model.encoder.typo=2"])
    with pytest.raises(UserError, match="only keys inside `model`"):
        load_config(REPO / "recipes/demo/tiny_cpu.yaml", ["+trainer.new_knob=1"])


def test_required_values(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# r\nrun: {name: x}\n")
    with pytest.raises(UserError, match="run.seed"):
        load_config(recipe)
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_is_written(tmp_path):
    cfg = load_config(REPO / "recipes/demo/tiny_cpu.yaml", ["model.tokenizer_dir=/some/tok"])
    path = save_config(cfg, tmp_path / "config.yaml")
    saved = OmegaConf.load(path)
    assert saved.model.tokenizer.dir == "/some/tok"  # interpolation resolved
    assert saved.model.encoder.feat_in == saved.model.preprocessor.features


def test_misspelt_override_on_each_command_line_is_one_message(capsys):
    """In this process for each stage (the console path: test_each_entry_point_is_a_command)."""
    from streamtune.stages import evaluate, train
    from streamtune.stages.export.__main__ import main as export

    recipe = str(REPO / "recipes/demo/tiny_cpu.yaml")
    for main, args in ((train.main, []), (evaluate.main, ["--model", "x.nemo"]), (export, ["parity", "--model",
                                                                                            "x.nemo"])):
        code = main([*args, "--config", recipe, "trainer.max_step=5"])
        one_line_error(code, capsys.readouterr().err, "unknown config key 'trainer.max_step'")


def test_each_entry_point_is_a_command():
    """Each documented wrapper and console command as a user runs it: --help answers, the demo recipe's merged
    config prints where a stage takes one; a mistake ends in one line and exit 2."""
    bindir = Path(sys.executable).parent
    entries = {("train.py",): "streamtune-train", ("evaluate.py",): "streamtune-eval",
               ("-m", "export", "all"): "streamtune-export", ("-m", "data_prep"): "streamtune-prep"}
    for wrapper, command in entries.items():
        for argv in ([sys.executable, *wrapper], [str(bindir / command), *wrapper[2:]]):
            helped = subprocess.run([*argv, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300)
            assert helped.returncode == 0 and "usage:" in helped.stdout, (argv, helped.stderr[-2000:])
            if command != "streamtune-prep":
                printed = subprocess.run([*argv, "--config", str(DEMO_RECIPE), "--print-config"], cwd=REPO,
                                         capture_output=True, text=True, timeout=300)
                assert printed.returncode == 0, (argv, printed.stderr[-2000:])
                assert "att_context_size" in printed.stdout and "batch_duration_s" in printed.stdout, argv
    proc = run_entry("train.py", "--config", "recipes/demo/tiny_cpu.yaml", "trainer.max_step=5")
    one_line_error(proc.returncode, proc.stderr, "unknown config key 'trainer.max_step'")


def test_every_unset_mandatory_key_is_named_exactly(capsys):
    """The nemotron recipe leaves the start point and the data to the command line: all three are named at once."""
    from streamtune.stages import train

    recipe = REPO / "recipes/nemotron/full_finetune.yaml"
    with pytest.raises(UserError) as err:
        resolved(load_config(recipe))
    assert str(err.value).startswith("required config key(s) not set (??? in the recipe): "
                                     "data.dev, data.train, model.init_from;")
    code = train.main(["--config", str(recipe), "data.train=x", "data.dev=y"])
    one_line_error(code, capsys.readouterr().err, "required config key(s) not set (??? in the recipe): "
                                                  "model.init_from;")


def test_an_old_spelling_is_an_unknown_key():
    """Nothing has been released, so renamed keys keep no old spelling: it fails like any typo, with the hint."""
    with pytest.raises(UserError, match="unknown config key 'data.tokenizer_dir'.*Did you mean model.tokenizer_dir"):
        load_config(REPO / "recipes/demo/tiny_cpu.yaml", ["data.tokenizer_dir=/old/tok"])
    with pytest.raises(UserError, match="unknown config key 'eval.modes'"):
        load_config(REPO / "recipes/demo/tiny_cpu.yaml", ["eval.modes=[offline]"])


def test_a_recipe_builds_on_a_base(tmp_path):
    (tmp_path / "base.yaml").write_text("# base\nrun: {name: base, seed: 1}\ntrainer: {max_steps: 10, "
                                        "val_check_interval: 5}\n")
    (tmp_path / "child.yaml").write_text("# child\nbase: base.yaml\nrun: {name: child}\ntrainer: {max_steps: 3}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert (cfg.run.name, cfg.run.seed, cfg.trainer.max_steps, cfg.trainer.val_check_interval) == ("child", 1, 3, 5)
    (tmp_path / "loop.yaml").write_text("# loop\nbase: loop.yaml\n")
    with pytest.raises(UserError, match="its own base"):
        load_config(tmp_path / "loop.yaml")
