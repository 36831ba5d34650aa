"""`python -m export` on the tiny trained model: files, verdicts and exit codes."""

from __future__ import annotations

import json

from pathlib import Path

from tests.conftest import DEMO_RECIPE


def test_export_parity_then_package(trained_run, tiny_overrides):
    from export.__main__ import main

    model = str(trained_run / "final.nemo")
    args = ["--config", str(DEMO_RECIPE), "--model", model, *tiny_overrides]
    assert main(["parity", *args]) == 0
    dist = next(o.split("=", 1)[1] for o in tiny_overrides if o.startswith("export.dist_dir="))
    bundle = Path(dist) / "tiny_cpu"
    parity = json.loads((bundle / "parity.json").read_text())
    assert parity["passed"] and [m["chunk_ms"] for m in parity["modes"]] == [1120, 560, 160, 80]
    assert all(m["encoder_max_abs_diff"] < 1e-4 for m in parity["modes"])
    assert main(["package", *args]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("model.nemo", "parity.json", "tokens.txt", "tokenizer/tokenizer.model", "config.yaml"):
        assert name in manifest["files"], name
    tokens = (bundle / "tokens.txt").read_text().splitlines()
    assert tokens[-1].split()[0] == "<blk>" and int(tokens[-1].split()[1]) == len(tokens) - 1


def test_parity_failure_exits_nonzero_and_blocks_package(trained_run, tiny_overrides, tmp_path):
    from export.__main__ import main

    model = str(trained_run / "final.nemo")
    # A negative tolerance no real difference can meet: parity must fail loudly and package must refuse.
    args = ["--config", str(DEMO_RECIPE), "--model", model, *tiny_overrides, f"export.dist_dir={tmp_path}",
            "export.parity_atol=-1"]
    assert main(["parity", *args]) == 1
    assert json.loads((tmp_path / "tiny_cpu" / "parity.json").read_text())["passed"] is False
    assert main(["package", *args]) == 2
