"""int8 export (second tier): every quantisation variant made and scored on the parity set, the best kept as
onnx/<ms>ms-int8 in a bundle that verifies, its choice and ranking in onnx.json and the model card."""

from __future__ import annotations

import json

import pytest

from tests.helpers import DEMO_RECIPE

pytestmark = pytest.mark.e2e  # five variants x four chunk modes decoded: the fast tier's bundle leaves them out


def test_int8_variants_are_scored_and_the_best_is_shipped(words_run, words_overrides, tmp_path):
    from streamtune.stages.export.__main__ import main

    model = str(words_run / "final.nemo")
    assert main(["all", "--config", str(DEMO_RECIPE), "--model", model, *words_overrides, "export.int8=true",
                 f"export.dist_dir={tmp_path}", f"export.results={words_run / 'eval' / 'results.json'}"]) == 0
    bundle = tmp_path / "tenwords"
    manifest = json.loads((bundle / "manifest.json").read_text())
    for ms in (1120, 560, 160, 80):
        for part in ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt"):
            assert f"onnx/{ms}ms-int8/{part}" in manifest["files"]
    onnx = json.loads((bundle / "onnx.json").read_text())
    choice = onnx["int8_choice"]
    ranking = [v["variant"] for v in choice["ranking"]]
    assert choice["variant"] == ranking[0] and len(ranking) == 5, choice
    assert all(m["int8"]["variant"] == choice["variant"] for m in onnx["modes"])
    assert f"`{choice['variant']}` variant" in (bundle / "MODEL_CARD.md").read_text()
    assert main(["verify", "--bundle", str(bundle)]) == 0
