"""evaluate.py and `python -m export` on the tiny trained model: files, verdicts and exit codes."""

from __future__ import annotations

import json

from pathlib import Path

from tests.conftest import DEMO_RECIPE


def test_evaluate_writes_reports(trained_run, tiny_overrides, tmp_path):
    import evaluate

    out = tmp_path / "eval"
    rc = evaluate.main(["--config", str(DEMO_RECIPE), "--model", str(trained_run / "final.nemo"),
                        "--out", str(out), *tiny_overrides])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    got = {(r["chunk_ms"], r["decode"]) for r in results["results"]}
    assert got == {(ms, d) for ms in (1120, 560, 160, 80) for d in ("streaming", "offline")}
    assert results["num_utts"] == 8
    assert all(0.0 <= r["wer"] for r in results["results"])
    assert set(results["streaming_equals_offline"]) == {"1120", "560", "160", "80"}
    assert "| 80 ms |" in (out / "results.md").read_text()
    rows = [json.loads(line) for line in open(out / "hyps.jsonl")]
    assert len(rows) == 8 * 8 and {"id", "ref", "hyp", "errors"} <= set(rows[0])


def test_evaluate_max_wer_gate_fails(trained_run, tiny_overrides, tmp_path):
    import evaluate

    # A 6-step model is far above 1 % WER: the gate must say so with a non-zero exit.
    rc = evaluate.main(["--config", str(DEMO_RECIPE), "--model", str(trained_run / "final.nemo"),
                        "--out", str(tmp_path), *tiny_overrides, "eval.max_wer=1", "eval.modes=[streaming]",
                        "eval.chunk_ms=[560]"])
    assert rc == 1


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


def test_missing_model_is_one_clear_error(tiny_overrides, capsys):
    import evaluate

    assert evaluate.main(["--config", str(DEMO_RECIPE), "--model", "nope.nemo", *tiny_overrides]) == 2
    assert "model 'nope.nemo' does not exist" in capsys.readouterr().err
