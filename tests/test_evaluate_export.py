"""`python -m export` on the tiny trained model: the bundle, ONNX == PyTorch, sherpa-onnx, tampering, gates."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import DEMO_RECIPE, seeded, value_of


def test_export_all_builds_a_bundle_that_verifies(bundle):
    from streamtune.stages.export.__main__ import main

    manifest = json.loads((bundle / "manifest.json").read_text())
    for name in ("model.nemo", "parity.json", "onnx.json", "tokens.txt", "tokenizer/tokenizer.model", "config.yaml",
                 "MODEL_CARD.md", "sample/sample.wav", "sample/expected.json", "results.json"):
        assert name in manifest["files"], name
    for ms in (1120, 560, 160, 80):
        for part in ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt"):
            assert f"onnx/{ms}ms/{part}" in manifest["files"]
    assert not any("-int8/" in name for name in manifest["files"]), "export.int8=false (tests/test_export_int8.py)"
    assert {"torch", "nemo_toolkit", "onnxruntime"} <= set(manifest["packages"]) and "sha" in manifest["git"]
    tokens = (bundle / "tokens.txt").read_text().splitlines()
    assert tokens[-1].split()[0] == "<blk>" and int(tokens[-1].split()[1]) == len(tokens) - 1
    card = (bundle / "MODEL_CARD.md").read_text()
    for section in ("## Data", "## Word error rates", "## Streaming parity", "## ONNX", "NVIDIA Open Model License"):
        assert section in card, section
    assert "| 80 ms |" in card.split("## Word error rates")[1], "the WER table from evaluate's results.json"
    assert main(["verify", "--bundle", str(bundle)]) == 0


def test_onnx_fp32_tokens_equal_pytorch_streaming_in_every_mode(bundle, capsys):
    report = json.loads((bundle / "onnx.json").read_text())
    assert report["passed"] and [m["chunk_ms"] for m in report["modes"]] == [1120, 560, 160, 80]
    for m in report["modes"]:
        print(f"{m['chunk_ms']} ms: ONNX vs PyTorch encoder max abs diff {m['fp32']['encoder_max_abs_diff']:.2e}")
        assert m["fp32"]["token_mismatched_utts"] == []
        assert m["fp32"]["encoder_max_abs_diff"] < 1e-4
        meta = m["metadata"]
        assert int(meta["window_size"]) == int(meta["chunk_shift"]) + 9 and meta["normalize_type"] == ""
    with capsys.disabled():
        print("\n" + "\n".join(f"  ONNX fp32 vs PyTorch streaming, {m['chunk_ms']} ms: encoder max abs diff "
                               f"{m['fp32']['encoder_max_abs_diff']:.2e}" for m in report["modes"]))


def test_onnx_check_is_real(trained_model, corpus, tmp_path):
    """The fp32 comparison can fail: a decoder whose joiner is perturbed gives other tokens."""
    import onnx
    from onnx import numpy_helper

    from streamtune.data.reading import load_utterances
    from streamtune.export.onnx_decoder import OrtStreamingDecoder
    from streamtune.export.onnx_export import export_mode
    from streamtune.model.chunks import chunk_modes
    from streamtune.streaming.runner import StreamingRunner

    mode = next(m for m in chunk_modes(trained_model) if m.chunk_ms == 560)
    export_mode(trained_model, mode, tmp_path / "560ms")
    utts = load_utterances(corpus / "cuts_dev.jsonl.gz")
    runner = StreamingRunner(trained_model, batch_size=4, feeding="export")
    feats = [runner.features(u.audio) for u in utts]
    reference = runner.streaming(mode, feats).tokens
    assert sum(map(len, reference)) > 0, "precondition: a 6-step model emits tokens, every one of which must match"
    assert [OrtStreamingDecoder(tmp_path / "560ms").decode(f.numpy())[0] for f in feats] == reference
    joiner = onnx.load(str(tmp_path / "560ms" / "joiner.onnx"))
    biggest = max(joiner.graph.initializer, key=lambda t: numpy_helper.to_array(t).size)
    noisy = numpy_helper.to_array(biggest) + 0.5 * torch.randn(numpy_helper.to_array(biggest).shape).numpy()
    biggest.CopyFrom(numpy_helper.from_array(noisy.astype("float32"), biggest.name))
    onnx.save(joiner, str(tmp_path / "560ms" / "joiner.onnx"))
    assert [OrtStreamingDecoder(tmp_path / "560ms").decode(f.numpy())[0] for f in feats] != reference


@pytest.mark.parametrize("ms", [560, 160])
def test_sherpa_onnx_decodes_the_bundle_and_the_gate_decides_on_that_evidence(bundle, words_model, words_overrides,
                                                                              ms):
    """sherpa-onnx and our ONNX Runtime decoder decode the bundle's files again here: the texts export recorded,
    and the same verdict from the same evidence (the paired bootstrap over the parity set's utterances). A bundle
    exists only when no gate failed; sherpa-onnx's features are its own, so its texts may differ from ours."""
    from streamtune.data.reading import load_utterances
    from streamtune.data.text import normalise_text
    from streamtune.evaluation.gates import margin_verdict
    from streamtune.evaluation.metrics import corpus_errors
    from streamtune.export.onnx_decoder import OrtStreamingDecoder
    from streamtune.export.sherpa import sherpa_decode
    from streamtune.streaming.runner import StreamingRunner

    report = {m["chunk_ms"]: m for m in json.loads((bundle / "onnx.json").read_text())["modes"]}[ms]
    sherpa = report["sherpa_onnx"]
    assert sherpa["padding"]["left_samples"] == 2640
    utts = load_utterances(value_of(words_overrides, "data.dev"), int(value_of(words_overrides,
                                                                               "export.parity_max_utts")))
    refs = [u.text for u in utts]
    texts, _ = sherpa_decode(bundle / "onnx" / f"{ms}ms", [u.audio for u in utts])
    runner = StreamingRunner(words_model, feeding="export")
    decoder = OrtStreamingDecoder(bundle / "onnx" / f"{ms}ms")
    ours = runner.texts([decoder.decode(runner.features(u.audio).numpy())[0] for u in utts])
    # The recorded agreement is what these texts give: every listed difference is one of them, the rest agree.
    by_id = dict(zip((u.id for u in utts), texts))
    assert all(by_id[d["id"]] == d["sherpa_onnx"] for d in sherpa["differences"])
    assert sherpa["utts_agreeing_with_ours"] == sum(normalise_text(a) == normalise_text(b) for a, b in zip(ours, texts))
    assert sherpa["agreement_rate"] == pytest.approx(sherpa["utts_agreeing_with_ours"] / len(utts))
    assert corpus_errors(refs, texts)[0].wer == pytest.approx(sherpa["wer"])
    assert corpus_errors(refs, ours)[0].wer == pytest.approx(report["fp32"]["wer"])
    mine, theirs = corpus_errors(refs, ours)[1], corpus_errors(refs, texts)[1]
    again = margin_verdict([e.errors for e in mine], [e.errors for e in theirs], [e.ref_words for e in mine],
                           sherpa["max_wer_delta_points"])
    assert again == sherpa["verdict"] and again["verdict"] != "fail" and sherpa["passed"]
    assert report["fp32"]["wer"] < 0.5, "precondition: the model recognises most of its words"
    print(f"{ms} ms: sherpa-onnx WER {100 * sherpa['wer']:.2f} %, ours {100 * report['fp32']['wer']:.2f} %, "
          f"identical texts {100 * sherpa['agreement_rate']:.0f} %, verdict {again['verdict']}")


def test_the_parity_set_is_chosen_by_words(words_overrides, tmp_path, capsys):
    """export.parity_min_words: the first utterances of the dev set holding at least that many reference words (the
    fewest that do), said on the console; export.parity_max_utts caps them."""
    from streamtune.config.loading import load_config
    from streamtune.stages.export.__main__ import _parity_set

    overrides = [*words_overrides, "export.parity_max_utts=0", "export.parity_min_words=30"]
    utts = _parity_set(load_config(DEMO_RECIPE, overrides), tmp_path)
    counts = [len(u.text.split()) for u in utts]
    assert sum(counts) >= 30 > sum(counts[:-1])
    assert f"parity set: {len(utts)} utterances, {sum(counts)} reference words" in capsys.readouterr().out
    capped = _parity_set(load_config(DEMO_RECIPE, [*overrides, "export.parity_max_utts=3"]), tmp_path)
    assert [u.id for u in capped] == [u.id for u in utts[:3]]
    assert "fewer than export.parity_min_words=30" in capsys.readouterr().out


@pytest.mark.e2e
def test_an_adapter_model_exports_with_its_adapters(bundle, words_overrides, tmp_path):
    """The ten-word model fine-tuned with adapters (finetune.mode=adapters, train.py), then `export all` with the
    default gates: parity passes, the ONNX encoders carry the adapters (their outputs are the adapted model's,
    not the base's: the two differ far beyond the parity tolerance, and ONNX matches the adapted one within it),
    the tokens are the adapted model's, and the bundle verifies."""
    from streamtune.data.reading import load_utterances
    from streamtune.export.onnx_decoder import OrtStreamingDecoder
    from streamtune.model.build import load_model
    from streamtune.model.chunks import chunk_modes
    from streamtune.stages import train
    from streamtune.stages.export.__main__ import main as export_main
    from streamtune.streaming.runner import StreamingRunner

    base = bundle / "model.nemo"
    kept = [o for o in words_overrides if not o.startswith(("model.tokenizer_dir=", "run.output_dir=", "run.name=",
                                                            "export.dist_dir=", "trainer."))]
    # model.tokenizer_dir=null: the start point's own tokenizer (the recipe's would replace it).
    assert train.main(["--config", str(DEMO_RECIPE), *kept, f"model.init_from={base}", "model.tokenizer_dir=null",
                       "finetune.mode=adapters",
                       "finetune.adapter_dim=16", "trainer.max_steps=40", "trainer.val_check_interval=40",
                       "trainer.enable_progress_bar=false", "logger.wandb_mode=disabled",
                       f"run.output_dir={tmp_path / 'runs'}", "run.name=adapted"]) == 0
    adapted = next((tmp_path / "runs").glob("*/latest")).resolve() / "final.nemo"
    assert export_main(["all", "--config", str(DEMO_RECIPE), "--model", str(adapted), *kept,
                        f"export.dist_dir={tmp_path / 'dist'}", "run.name=adapted"]) == 0
    out = tmp_path / "dist" / "adapted"
    assert json.loads((out / "parity.json").read_text())["passed"]
    assert export_main(["verify", "--bundle", str(out)]) == 0
    utts = load_utterances(value_of(words_overrides, "data.dev"), 10)
    tuned, plain = load_model(adapted), load_model(base)
    assert any("adapter" in name for name, _ in tuned.named_parameters())
    assert tuned.tokenizer.vocab_size == plain.tokenizer.vocab_size
    for mode in chunk_modes(tuned):
        runner, runner_base = (StreamingRunner(m, batch_size=4, feeding="export") for m in (tuned, plain))
        feats = [runner.features(u.audio) for u in utts]
        ours = runner.streaming(mode, feats, keep_encoded=True)
        theirs = runner_base.streaming(mode, feats, keep_encoded=True)
        decoder = OrtStreamingDecoder(out / "onnx" / f"{mode.chunk_ms}ms")
        for k, f in enumerate(feats):
            tokens, encoded = decoder.decode(f.numpy(), keep_encoded=True)
            assert tokens == ours.tokens[k], (mode.chunk_ms, k)
            onnx_vs_adapted = float(np.abs(encoded - ours.encoded[k].numpy()).max())
            adapted_vs_base = float((ours.encoded[k] - theirs.encoded[k]).abs().max())
            assert onnx_vs_adapted < 1e-4 < adapted_vs_base / 100, (mode.chunk_ms, onnx_vs_adapted, adapted_vs_base)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


@pytest.mark.parametrize("target", ["model.nemo", "onnx/560ms/encoder.onnx", "tokens.txt", "sample/expected.json",
                                    "MODEL_CARD.md"])
def test_verify_fails_on_a_flipped_byte(bundle, tmp_path, capsys, target):
    from streamtune.stages.export.__main__ import main

    copy = _copy(bundle, tmp_path)
    data = bytearray((copy / target).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / target).write_bytes(bytes(data))
    assert main(["verify", "--bundle", str(copy)]) == 1
    assert f"{target}: sha256 differs" in capsys.readouterr().err


def test_verify_fails_on_a_missing_or_an_unlisted_file(bundle, tmp_path, capsys):
    from streamtune.stages.export.__main__ import main

    copy = _copy(bundle, tmp_path)
    (copy / "onnx" / "80ms" / "joiner.onnx").unlink()
    assert main(["verify", "--bundle", str(copy)]) == 1
    assert "onnx/80ms/joiner.onnx: listed in manifest.json but missing" in capsys.readouterr().err
    copy = _copy(bundle, tmp_path / "b")
    (copy / "onnx" / "560ms" / "extra.onnx").write_bytes(b"not in the manifest")
    assert main(["verify", "--bundle", str(copy)]) == 1
    assert "onnx/560ms/extra.onnx: not listed in manifest.json" in capsys.readouterr().err


def test_tarball_is_reproducible(bundle, tmp_path):
    from streamtune.export.package import write_tarball

    first = hashlib.sha256((bundle.parent / f"{bundle.name}.tar.gz").read_bytes()).hexdigest()
    again = write_tarball(_copy(bundle, tmp_path), tmp_path / "again.tar.gz")  # other dir, other mtimes
    assert hashlib.sha256(again.read_bytes()).hexdigest() == first


@pytest.mark.parametrize("norm", ["group_norm1", "instance_norm"])
def test_a_model_that_breaks_streaming_fails_parity_and_is_not_packaged(tiny_overrides, tmp_path, norm):
    """Group / instance norm in the convolution module normalise over time (the whole utterance offline): no
    chunk can match that. Instance norm cannot even run on a one-frame chunk: that is a failed mode too."""
    from streamtune.config.loading import load_config
    from streamtune.model.build import build_model
    from streamtune.stages.export.__main__ import main

    overrides = [*tiny_overrides, f"model.encoder.conv_norm_type={norm}", f"export.dist_dir={tmp_path}"]
    torch.manual_seed(seeded(0))
    build_model(load_config(DEMO_RECIPE, overrides)).save_to(str(tmp_path / "broken.nemo"))
    args = ["--config", str(DEMO_RECIPE), "--model", str(tmp_path / "broken.nemo"), *overrides]
    assert main(["parity", *args]) == 1
    parity = json.loads((tmp_path / "tiny_cpu" / "parity.json").read_text())
    assert not parity["passed"] and not any(m["passed"] for m in parity["modes"])
    assert all(m.get("error") or m["encoder_max_abs_diff"] > 1e-3 for m in parity["modes"]), parity["modes"]
    assert main(["package", *args]) == 2
    assert main(["all", *args]) == 1
    assert not (tmp_path / "tiny_cpu" / "manifest.json").exists()


def test_parity_failure_exits_nonzero_and_blocks_package(trained_run, tiny_overrides, tmp_path):
    from streamtune.stages.export.__main__ import main

    model = str(trained_run / "final.nemo")
    # A negative tolerance no real difference can meet: parity must fail loudly and package must refuse.
    args = ["--config", str(DEMO_RECIPE), "--model", model, *tiny_overrides, f"export.dist_dir={tmp_path}",
            "export.parity_atol=-1"]
    assert main(["parity", *args]) == 1
    assert json.loads((tmp_path / "tiny_cpu" / "parity.json").read_text())["passed"] is False
    assert main(["package", *args]) == 2


def test_parity_without_a_dev_set_uses_generated_speech(trained_run, tiny_overrides, tmp_path):
    from streamtune.stages.export.__main__ import main

    args = ["--config", str(DEMO_RECIPE), "--model", str(trained_run / "final.nemo"), *tiny_overrides,
            f"export.dist_dir={tmp_path}", "data.dev=null", "data.test=null", "export.parity_max_utts=4"]
    assert main(["parity", *args]) == 0
    parity = json.loads((tmp_path / "tiny_cpu" / "parity.json").read_text())
    assert parity["passed"] and parity["num_utts"] == 4 and parity["utt_ids"][0].startswith("parity-")


def test_an_encoder_with_external_weights_gets_one_data_file(bundle, tmp_path):
    """Encoders over 2 GB (the 0.6B model) come out of torch with one file per weight: the metadata step
    gathers them into encoder.onnx.data, and ONNX Runtime and sherpa-onnx load the result."""
    import onnx
    import soundfile as sf

    from streamtune.export.onnx_decoder import OrtStreamingDecoder
    from streamtune.export.onnx_export import _external_files, _set_metadata, read_metadata
    from streamtune.export.sherpa import sherpa_decode
    from streamtune.model.build import load_model
    from streamtune.streaming.runner import StreamingRunner

    src, dst = bundle / "onnx" / "560ms", tmp_path / "560ms"
    shutil.copytree(src, dst)
    graph = onnx.load(str(dst / "encoder.onnx"))
    onnx.save_model(graph, str(dst / "encoder.onnx"), save_as_external_data=True, all_tensors_to_one_file=False,
                    size_threshold=256)  # what torch's exporter writes for a model over 2 GB
    assert len(_external_files(onnx.load(str(dst / "encoder.onnx"), load_external_data=False))) > 10
    _set_metadata(dst / "encoder.onnx", read_metadata(src / "encoder.onnx"))
    assert _external_files(onnx.load(str(dst / "encoder.onnx"), load_external_data=False)) == ["encoder.onnx.data"]
    assert sorted(p.name for p in dst.iterdir()) == ["bpe.vocab", "decoder.onnx", "encoder.onnx",
                                                     "encoder.onnx.data", "joiner.onnx", "tokens.txt"]
    assert read_metadata(dst / "encoder.onnx") == read_metadata(src / "encoder.onnx")
    model = load_model(bundle / "model.nemo")
    audio = sf.read(bundle / "sample" / "sample.wav", dtype="float32")[0]
    feats = StreamingRunner(model, batch_size=1, feeding="export").features(audio).numpy()
    assert OrtStreamingDecoder(dst).decode(feats)[0] == OrtStreamingDecoder(src).decode(feats)[0]
    assert sherpa_decode(dst, [audio])[0] == sherpa_decode(src, [audio])[0]


def test_verify_refuses_links_paths_outside_the_bundle_and_partial_samples(bundle, tmp_path, capsys):
    from streamtune.stages.export.__main__ import main

    def verify_fails(copy: Path, *needles: str, extra=()):
        assert main(["verify", "--bundle", str(copy), *extra]) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err and all(n in err for n in needles), err

    # A file replaced by a link to identical content.
    copy = _copy(bundle, tmp_path / "link")
    target = copy / "tokens.txt"
    shutil.copy(target, tmp_path / "tokens-elsewhere.txt")
    target.unlink()
    target.symlink_to(tmp_path / "tokens-elsewhere.txt")
    verify_fails(copy, "tokens.txt: a link")
    # A manifest entry that points outside the bundle (the file exists there, with the right hash).
    copy = _copy(bundle, tmp_path / "outside")
    manifest = json.loads((copy / "manifest.json").read_text())
    (tmp_path / "outside" / "x.txt").write_text("hello")
    manifest["files"]["../x.txt"] = {"bytes": 5, "sha256": hashlib.sha256(b"hello").hexdigest()}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    verify_fails(copy, "../x.txt: listed in manifest.json with a path outside the bundle")
    # An emptied sample set, re-hashed into the manifest so that the hashes alone pass.
    copy = _copy(bundle, tmp_path / "empty")
    (copy / "sample" / "expected.json").write_text(json.dumps({"modes": {}}))
    manifest = json.loads((copy / "manifest.json").read_text())
    data = (copy / "sample" / "expected.json").read_bytes()
    manifest["files"]["sample/expected.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    verify_fails(copy, "sample/expected.json: no recorded tokens for")
    # A manifest with an entry missing its keys: one line, no traceback.
    copy = _copy(bundle, tmp_path / "keys")
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["tokens.txt"]["sha256"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    verify_fails(copy, "manifest.json: unreadable or incomplete")


def test_the_manifest_digest_catches_a_rewritten_bundle(bundle, tmp_path, capsys):
    """Edit a file and rewrite the manifest to match: only the published manifest sha256 tells."""
    from streamtune.export.parity import sha256_file
    from streamtune.stages.export.__main__ import main

    published = sha256_file(bundle / "manifest.json")
    assert main(["verify", "--bundle", str(bundle), "--expect-manifest-sha256", published]) == 0
    assert f"manifest.json sha256 {published} (as stated)" in capsys.readouterr().out
    copy = _copy(bundle, tmp_path)
    card = copy / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\nThis model is approved for medical use.\n")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["MODEL_CARD.md"] = {"bytes": card.stat().st_size, "sha256": sha256_file(card)}
    (copy / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    assert main(["verify", "--bundle", str(copy)]) == 0, "self-consistent: passes without the published digest"
    capsys.readouterr()
    assert main(["verify", "--bundle", str(copy), "--expect-manifest-sha256", published]) == 1
    assert f"not the {published} the publisher states" in capsys.readouterr().err
