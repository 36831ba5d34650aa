"""The demo learns: `make demo` end to end, with the README's WER bars asserted (slow: minutes; BENCHMARKS.md, Demo)."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_make_demo_learns():
    proc = subprocess.run(["make", "demo"], cwd=REPO, capture_output=True, text=True, timeout=30 * 60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = (REPO / "outputs/demo/runs/tiny_cpu/latest").resolve()
    results = json.loads((run / "eval" / "results.json").read_text())
    wer = {r["chunk_ms"]: r["wer"] for r in results["results"] if r["decode"] == "streaming"}
    assert wer[1120] <= 0.10 and wer[80] <= 0.12, wer  # bench/demo.py's bars, met with every seed it tried
    assert all(e["equal"] for e in results["streaming_equals_offline"]), results["streaming_equals_offline"]
    parity = json.loads((REPO / "dist/tiny_cpu/parity.json").read_text())
    assert parity["passed"] and parity["model_sha256"]
    assert json.loads((REPO / "dist/tiny_cpu/onnx.json").read_text())["passed"]
    assert (REPO / "dist/tiny_cpu/manifest.json").exists()  # `export all` ends with verify
