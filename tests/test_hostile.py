"""Hostile and malformed inputs through the real entry points: every one is rejected with a reason
(kept + rejected == read) or refused with one line; nothing the data names runs; nothing valid is lost.

Error paths call each stage's ``main([...])`` in this process; the first test runs data_prep as a command from another
directory (the console path; tests/test_config.py does so for the other entry points).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet

from tests.helpers import DEMO_RECIPE, REPO, loose_audio_files, one_line_error, run_entry, shar_cuts


def rejections(out: Path, run_name: str = "train") -> list[dict]:
    """The rejected items, and the report's counts checked to add up."""
    report = json.loads((out / f"report_{run_name}.json").read_text())
    assert report["kept"] + report["rejected"] == report["read"]
    rows = [json.loads(line) for line in open(out / f"rejected_{run_name}.jsonl")]
    assert len(rows) == report["rejected"]
    return rows


def prep(capsys, *args: str) -> tuple[int, str]:
    """``python -m data_prep ARGS`` in this process: (exit status, stderr)."""
    from streamtune.stages.data_prep.__main__ import main

    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def audio(corpus, tmp_path_factory) -> dict[str, Path]:
    """Good and bad audio files, made here."""
    root = tmp_path_factory.mktemp("hostile_audio")
    good = [Path(c.recording.sources[0].source) for c in CutSet.from_file(corpus / "cuts_train.jsonl.gz")][:3]
    samples, rate = sf.read(good[0], dtype="float32")
    files = {"good": good[0], "good2": good[1], "good3": good[2]}

    def write(name, data, sr=16000, **kw):
        files[name] = root / name
        sf.write(files[name], data, sr, **kw)

    write("stereo.wav", np.stack([samples, samples], axis=1))
    write("silent.wav", np.zeros(16000, dtype="float32"))
    write("empty.wav", np.zeros(0, dtype="float32"))
    write("short.wav", samples[:800])  # 0.05 s
    nan = samples.copy()
    nan[10:20] = np.nan
    write("nan.wav", nan, subtype="FLOAT")
    files["corrupt.wav"] = root / "corrupt.wav"
    files["corrupt.wav"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 7)
    files["truncated.wav"] = root / "truncated.wav"
    files["truncated.wav"].write_bytes(good[0].read_bytes()[: len(good[0].read_bytes()) // 3])
    # Names that a shell would run, on files that exist: read through a shell they would create MARKER.
    for name in ("x; touch MARKER #.sph", "y$(touch MARKER).wav.sh"):
        files[name] = root / name
        shutil.copy(good[0], files[name])
    (root / "dir.wav").mkdir()
    files["dir.wav"] = root / "dir.wav"
    return files


def test_hostile_manifest_lines_are_each_rejected_with_their_reason(audio, tmp_path):
    g = str(audio["good"])
    dur = sf.info(g).duration
    lines = [  # (line, expected reason or None for kept)
        ({"audio_filepath": g, "duration": dur, "text": "red lamp"}, None),
        ({"audio_filepath": str(audio["good2"]), "text": "green door"}, None),  # duration read from the header
        ({"audio_filepath": "nowhere.wav", "duration": 1.0, "text": "a"}, "missing_audio"),
        ({"audio_filepath": 5, "duration": 1.0, "text": "a"}, "malformed_line"),
        ({"duration": 1.0, "text": "a"}, "malformed_line"),
        ("this is not json", "malformed_line"),
        (["a", "list"], "malformed_line"),
        (b"\xff\xfe not utf-8\n", "invalid_utf8"),
        ({"audio_filepath": g, "duration": "abc", "text": "a"}, "malformed_value"),
        (json.dumps({"audio_filepath": g, "duration": float("nan"), "text": "a"}), "malformed_value"),  # NaN
        (json.dumps({"audio_filepath": g, "duration": float("inf"), "text": "a"}), "malformed_value"),  # Infinity
        ({"audio_filepath": g, "duration": -1.0, "text": "a"}, "malformed_value"),
        ({"audio_filepath": g, "duration": True, "text": "a"}, "malformed_value"),
        ({"audio_filepath": g, "duration": [1.0], "text": "a"}, "malformed_value"),
        ({"audio_filepath": g, "offset": "x", "duration": 0.5, "text": "a"}, "malformed_value"),
        ({"audio_filepath": g, "offset": -0.5, "duration": 0.5, "text": "a"}, "malformed_value"),
        (json.dumps({"audio_filepath": g, "offset": float("nan"), "duration": 0.5, "text": "a"}), "malformed_value"),
        (json.dumps({"audio_filepath": g, "duration": dur, "text": "\ud83d"}), "invalid_text"),  # a lone surrogate
        ({"audio_filepath": g, "duration": dur, "text": ""}, "empty_text"),
        ({"audio_filepath": g, "duration": dur, "text": "   \t "}, "empty_text"),
        ({"audio_filepath": g, "duration": dur, "text": None}, "empty_text"),
        ({"audio_filepath": g, "duration": dur, "text": 42}, "empty_text"),
        ({"audio_filepath": str(audio["x; touch MARKER #.sph"]), "duration": dur, "text": "a"}, "unsafe_source"),
        ({"audio_filepath": str(audio["x; touch MARKER #.sph"]), "text": "a"}, "unsafe_source"),  # header not read
        ({"audio_filepath": str(audio["y$(touch MARKER).wav.sh"]), "text": "a"}, "unsafe_source"),
        ({"audio_filepath": str(audio["truncated.wav"]), "duration": dur, "text": "a"}, "duration_mismatch"),
        ({"audio_filepath": str(audio["corrupt.wav"]), "duration": 1.0, "text": "a"}, "undecodable_audio"),
        ({"audio_filepath": str(audio["empty.wav"]), "duration": 0.5, "text": "a"}, "empty_audio"),
        ({"audio_filepath": str(audio["silent.wav"]), "duration": 1.0, "text": "a"}, "silent_audio"),
        ({"audio_filepath": str(audio["nan.wav"]), "duration": dur, "text": "a"}, "nonfinite_samples"),
        ({"audio_filepath": str(audio["stereo.wav"]), "duration": dur, "text": "a"}, "multichannel_audio"),
        ({"audio_filepath": str(audio["short.wav"]), "duration": 0.05, "text": "a"}, "duration_out_of_bounds"),
        ({"audio_filepath": g, "duration": 99.0, "text": "a"}, "duration_out_of_bounds"),
        ({"audio_filepath": g, "offset": dur + 1.0, "duration": 0.5, "text": "a"}, "duration_mismatch"),
        ({"audio_filepath": str(audio["dir.wav"]), "duration": 1.0, "text": "a"}, "undecodable_audio"),
        ({"audio_filepath": g, "duration": dur, "text": "red lamp"}, "duplicate_id"),
        ({"audio_filepath": g, "duration": dur, "text": "a", "source_lang": "de"}, "other_language"),
        ("[" * 5000 + "]" * 5000, "malformed_line"),
    ]
    manifest = tmp_path / "hostile.jsonl"
    with open(manifest, "wb") as f:
        for line, _ in lines:
            f.write(line if isinstance(line, bytes) else
                    ((line if isinstance(line, str) else json.dumps(line)) + "\n").encode())
    out = tmp_path / "out"
    # From another directory: the installed module (the checkout's `data_prep` wrapper is not on the path there).
    proc = run_entry("-m", "streamtune.stages.data_prep", "nemo", "--manifest", str(manifest), "--out", str(out),
                     "--lang", "en", cwd=tmp_path)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    rows = rejections(out)
    got = {int(r["detail"].split("hostile.jsonl:")[1].split(":")[0]): r["reason"] for r in rows}
    expected = {k: reason for k, (_, reason) in enumerate(lines, start=1) if reason}
    assert got == expected
    assert len(CutSet.from_file(out / "cuts_train.jsonl.gz")) == 2
    assert not any(tmp_path.rglob("MARKER*")) and not (REPO / "MARKER").exists(), "nothing the data names ran"


def _cut_with_source(good: Path, source_type: str, source, cut_id: str):
    from lhotse import MonoCut, Recording, SupervisionSegment
    from lhotse.audio import AudioSource

    rec = Recording.from_file(good, recording_id=cut_id)
    rec = Recording(id=cut_id, sources=[AudioSource(type=source_type, channels=[0], source=source)],
                    sampling_rate=rec.sampling_rate, num_samples=rec.num_samples, duration=rec.duration)
    sup = SupervisionSegment(id=cut_id, recording_id=cut_id, start=0.0, duration=rec.duration, text="red lamp")
    return MonoCut(id=cut_id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup])


def hostile_cuts(audio, marker: Path) -> list:
    """Cuts whose audio sources would run a command, fetch a URL or go through sph2pipe, and one good cut."""
    from lhotse.cut import MixedCut, MixTrack

    good = audio["good"]
    command = _cut_with_source(good, "command", f"touch {marker}; sox {good} -t wav -", "command")
    url = _cut_with_source(good, "url", f"http://127.0.0.1:9/{marker.name}.wav", "url")
    sph = _cut_with_source(good, "file", str(audio["x; touch MARKER #.sph"]), "sph")
    garbage = _cut_with_source(good, "memory", "\x00\x01garbage", "memory")  # a JSON cuts file carries text only
    mixed = MixedCut(id="mixed", tracks=[MixTrack(cut=_cut_with_source(good, "file", str(good), "m1")),
                                         MixTrack(cut=_cut_with_source(good, "command", f"touch {marker}", "m2"))])
    return [_cut_with_source(good, "file", str(good), "ok"), command, url, sph, garbage, mixed]


def test_lhotse_cuts_that_name_commands_are_refused_everywhere(audio, tmp_path, tiny_overrides, trained_run, capsys):
    from streamtune.stages import evaluate, train

    marker = tmp_path / "MARKER"
    cuts_path = tmp_path / "in" / "cuts_x.jsonl.gz"
    cuts_path.parent.mkdir()
    CutSet.from_cuts(hostile_cuts(audio, marker)).to_file(cuts_path)
    # data_prep keeps the good one and rejects the others, naming why.
    code, err = prep(capsys, "lhotse", "--cuts", str(cuts_path), "--out", str(tmp_path / "out"))
    assert code == 0 and "Traceback" not in err, err[-3000:]
    reasons = {r["item"]: r["reason"] for r in rejections(tmp_path / "out")}
    assert reasons == {"command": "unsafe_source", "url": "unsafe_source", "sph": "unsafe_source",
                       "memory": "undecodable_audio", "mixed": "unsafe_source"}
    # training and evaluation refuse such a cuts file with one line, before reading any audio.
    code = train.main(["--config", str(DEMO_RECIPE), *tiny_overrides, f"data.train={cuts_path}",
                       f"run.output_dir={tmp_path / 'runs'}"])
    one_line_error(code, capsys.readouterr().err, "cut 'command' is refused", "type 'command'")
    assert not (tmp_path / "runs").exists()
    code = evaluate.main(["--config", str(DEMO_RECIPE), "--model", str(trained_run / "final.nemo"), "--cuts",
                          str(cuts_path), "--out", str(tmp_path / "eval"), *tiny_overrides])
    one_line_error(code, capsys.readouterr().err, "cut 'command' is refused")
    # Given as --cuts to lhotse writing into its own folder: refused rather than overwriting its input.
    train_cuts = tmp_path / "out" / "cuts_train.jsonl.gz"
    one_line_error(*prep(capsys, "lhotse", "--cuts", str(train_cuts), "--out", str(tmp_path / "out"), "--force"),
                   "would overwrite the input")
    assert not marker.exists(), "nothing the data names ran"


def test_ids_from_paths_do_not_collide_and_splits_keep_their_reports(audio, tmp_path, capsys):
    (tmp_path / "followme").mkdir()
    shutil.copy(audio["good"], tmp_path / "followme" / "sorry.wav")
    shutil.copy(audio["good2"], tmp_path / "sorry.wav")
    shutil.copy(audio["good3"], tmp_path / "followme__sorry.wav")  # would collide with a naive "/" -> "__"
    entries = [{"audio_filepath": p, "text": t} for p, t in
               (("followme/sorry.wav", "one"), ("sorry.wav", "two"), ("followme__sorry.wav", "three"))]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    (tmp_path / "dev.jsonl").write_text(json.dumps({"audio_filepath": "nowhere.wav", "text": "x"}) + "\n" +
                                        json.dumps(entries[0]) + "\n")
    out = tmp_path / "out"
    assert prep(capsys, "nemo", "--manifest", str(tmp_path / "train.jsonl"), "--out", str(out))[0] == 0
    assert prep(capsys, "nemo", "--manifest", str(tmp_path / "dev.jsonl"), "--out", str(out), "--split", "dev")[0] == 0
    kept = {c.id: c.supervisions[0].text for c in CutSet.from_file(out / "cuts_train.jsonl.gz")}
    assert len(kept) == 3 and kept["followme__sorry"] == "one" and kept["sorry"] == "two"
    assert sorted(kept.values()) == ["one", "three", "two"], "every utterance kept with its own transcript"
    # The dev run wrote its own report and rejections: the train run's are still there.
    assert json.loads((out / "report_train.json").read_text())["kept"] == 3
    assert [r["reason"] for r in rejections(out, "dev")] == ["missing_audio"]


def test_folder_and_table_problems_are_one_line(audio, tmp_path, capsys):
    folder = tmp_path / "rec"
    folder.mkdir()
    shutil.copy(audio["good"], folder / "a.wav")
    (tmp_path / "big.csv").write_text("id,text\n" + "a," + "x" * 200_000 + "\n")
    one_line_error(*prep(capsys, "folder", "--dir", str(folder), "--transcripts", str(tmp_path / "big.csv"),
                         "--out", str(tmp_path / "o1")), "big.csv", "line")
    (tmp_path / "nohead.csv").write_text("a,hello\n")
    one_line_error(*prep(capsys, "folder", "--dir", str(folder), "--transcripts", str(tmp_path / "nohead.csv"),
                         "--out", str(tmp_path / "o2")), "needs a header")
    one_line_error(*prep(capsys, "nemo", "--manifest", str(folder), "--out", str(tmp_path / "o3")), "is a directory")


def test_tarred_shards_with_hostile_members(audio, tmp_path, capsys):
    good, good2 = audio["good"], audio["good2"]
    shard = tmp_path / "s"
    shard.mkdir()
    with tarfile.open(shard / "audio_0.tar", "w") as tar:
        tar.add(good, arcname="../../escape.wav")  # a name that climbs out of any folder it is extracted to
        tar.add(good2, arcname="plain.wav")
        link = tarfile.TarInfo("link.wav")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    manifest = [{"audio_filepath": n, "text": t, "duration": d} for n, t, d in
                (("escape.wav", "one", sf.info(good).duration), ("plain.wav", "two", sf.info(good2).duration),
                 ("link.wav", "three", 1.0))]
    (shard / "manifest_0.json").write_text("".join(json.dumps(e) + "\n" for e in manifest))
    data = (shard / "audio_0.tar").read_bytes()
    (shard / "audio_1.tar").write_bytes(data[: len(data) // 2])  # truncated
    (shard / "manifest_1.json").write_text(json.dumps({"audio_filepath": "plain.wav", "text": "x"}) + "\n")
    out = tmp_path / "out"
    code, err = prep(capsys, "nemo-tarred", "--manifest", str(shard / "manifest_*.json"), "--tar",
                     str(shard / "audio_*.tar"), "--out", str(out), "--num-jobs", "1")
    assert code == 0 and "Traceback" not in err, err[-3000:]
    kept = {c.supervisions[0].text for c in shar_cuts(out).values()}
    assert kept == {"one", "two"}
    rows = rejections(out)
    reasons = sorted(r["reason"] for r in rows if r["reason"] != "no_manifest_entry")
    # link.wav is no file (missing_audio); the tar cut in half ends before plain.wav's member (corrupt_tar, or
    # missing_audio when it ends on a header), after it yields the escape.wav member (no entry in its manifest).
    assert reasons in (["corrupt_tar", "missing_audio"], ["missing_audio", "missing_audio"]), reasons
    assert [r["item"] for r in rows if r["reason"] == "no_manifest_entry"] in ([], ["escape.wav"]), rows
    assert not loose_audio_files(tmp_path.parent / "escape.wav") and not loose_audio_files(out)
    assert sorted(p.name for p in shard.iterdir()) == ["audio_0.tar", "audio_1.tar", "manifest_0.json",
                                                       "manifest_1.json"], "nothing is extracted anywhere"
    assert not any(p.is_symlink() for p in out.rglob("*"))
    # Two datasets' shard 0 at once cannot be paired: one line instead of a silent mix-up.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(shard / "audio_0.tar", other / "audio_0.tar")
    one_line_error(*prep(capsys, "nemo-tarred", "--manifest", str(shard / "manifest_0.json"), "--tar",
                         str(shard / "audio_0.tar"), str(other / "audio_0.tar"), "--out", str(tmp_path / "o2")),
                   "two tar files are shard 0")


def test_hf_ids_that_spell_the_same_file_name_keep_their_own_audio(audio, tmp_path, capsys):
    import datasets

    rows = {"audio": [{"bytes": audio[k].read_bytes(), "path": "x.wav"} for k in ("good", "good2")],
            "text": ["one", "two"], "id": ["a/1", "a__1"]}
    datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False)).to_parquet(
        str(tmp_path / "ds.parquet"))
    out = tmp_path / "out"
    assert prep(capsys, "hf", "--dataset", str(tmp_path / "ds.parquet"), "--id-column", "id", "--out", str(out))[0] == 0
    cuts = shar_cuts(out)
    assert set(cuts) == {"a/1", "a__1"}
    lengths = {k: c.load_audio().shape[-1] for k, c in cuts.items()}
    assert lengths == {"a/1": sf.info(audio["good"]).frames, "a__1": sf.info(audio["good2"]).frames}


def test_manifest_fuzzing_never_crashes_and_always_adds_up(tmp_path_factory, audio):
    """Property-based: any manifest line (random keys, types, numbers, text) is kept or rejected with a reason."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from streamtune.data.sources import nemo_manifests
    from streamtune.data.validate import ValidationConfig, write_validated

    reasons = {"missing_audio", "malformed_line", "malformed_value", "invalid_text", "empty_text", "unsafe_source",
               "duration_out_of_bounds", "duration_mismatch", "undecodable_audio", "duplicate_id", "other_language",
               "invalid_utf8", "malformed_item", "silent_audio", "empty_audio"}
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                        st.text(max_size=30), st.just(str(audio["good"])), st.just("x; touch MARKER #.sph"))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) |
                          st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
    entry = st.dictionaries(st.sampled_from(["audio_filepath", "duration", "offset", "text", "lang", "answer"]) |
                            st.text(max_size=8), values, max_size=6)
    line = st.one_of(entry.map(lambda e: json.dumps(e, allow_nan=True)), st.binary(max_size=60).map(
        lambda b: b.decode("latin-1")), st.text(max_size=60))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(line, min_size=1, max_size=8))
    def check(lines):
        root = tmp_path_factory.mktemp("fuzz")
        manifest = root / "m.jsonl"
        manifest.write_bytes("".join(s.replace("\n", " ") + "\n" for s in lines).encode("utf-8", "surrogatepass"))
        try:
            report = write_validated(nemo_manifests([str(manifest)]), root / "out", "train", ValidationConfig())
        except Exception as err:  # only "nothing valid remains" may end a run, as one UserError
            from streamtune.errors import UserError

            assert isinstance(err, UserError) and "nothing valid remains" in str(err), repr(err)
            report = None
        rows = [json.loads(x) for x in open(root / "out" / "rejected_train.jsonl")]
        assert {r["reason"] for r in rows} <= reasons
        if report is not None:
            assert report.kept + report.rejected == report.read
        assert not (root / "MARKER").exists()

    check()


# ----- checkpoints, runs, tracking, secrets ------------------------------------------------------------------
def _pickle_bomb(path: Path, marker: Path) -> Path:
    import torch

    class Bomb:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, "global_step": 3, "hyper_parameters": {"cfg": {}}, "bomb": Bomb()}, path)
    return path


def test_pickled_checkpoints_are_refused_not_run(tiny_overrides, tmp_path, capsys):
    from streamtune.stages import train

    marker = tmp_path / "MARKER"
    bomb = _pickle_bomb(tmp_path / "step0000003.ckpt", marker)
    for key in ("model.init_from", "run.resume"):
        code = train.main(["--config", str(DEMO_RECIPE), *tiny_overrides, f"{key}={bomb}",
                           f"run.output_dir={tmp_path / 'runs'}"])
        one_line_error(code, capsys.readouterr().err, "is refused", "posix.system")
    # run.resume=auto meets it among a run's checkpoints: refused as well, not skipped over or run.
    run_dir = tmp_path / "runs2" / "tiny_cpu" / "20260101-000000"
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(bomb, run_dir / "checkpoints" / bomb.name)
    code = train.main(["--config", str(DEMO_RECIPE), *tiny_overrides, "run.resume=auto",
                       f"run.output_dir={tmp_path / 'runs2'}"])
    one_line_error(code, capsys.readouterr().err, "is refused")
    assert not marker.exists()


# A function NeMo 3.0's own `_target_` allow-list admits (everything callable under nemo.collections.asr.parts), and
# one that writes files.
FOREIGN = "nemo.collections.asr.parts.utils.manifest_utils.write_manifest"


def _repacked(src: Path, dst: Path, encoder_target: str | None = None) -> Path:
    """``src`` (a .nemo) written again as another tar (other bytes), its encoder's ``_target_`` replaced if given."""
    import io

    import yaml

    with tarfile.open(src, "r:*") as tar:
        members = [(m, tar.extractfile(m).read() if m.isfile() else None) for m in tar.getmembers()]
    with tarfile.open(dst, "w") as out:
        for member, data in members:
            if encoder_target and member.name.endswith("model_config.yaml"):
                config = yaml.safe_load(data)
                config["encoder"]["_target_"] = encoder_target
                data = yaml.safe_dump(config).encode()
            member.size = len(data) if data is not None else 0
            member.mtime += 1
            out.addfile(member, io.BytesIO(data) if data is not None else None)
    return dst


def _rehashed(bundle: Path, rel: str) -> None:
    import hashlib

    manifest = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / rel).read_bytes()
    manifest["files"][rel] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def _verify_failed(stderr: str, *needles: str) -> None:
    """`export verify`'s failure: one FAIL line holding every needle, no traceback."""
    fails = [line for line in stderr.splitlines() if line.startswith("FAIL: ")]
    assert "Traceback" not in stderr and len(fails) == 1 and all(n in fails[0] for n in needles), stderr[-2000:]


@pytest.fixture
def restores(monkeypatch) -> list[str]:
    """Every path NeMo is asked to restore from (through the real restore)."""
    from nemo.collections.asr.models import ASRModel

    calls, real = [], ASRModel.restore_from.__func__

    def spy(cls, restore_path, *args, **kwargs):
        calls.append(str(restore_path))
        return real(cls, restore_path, *args, **kwargs)

    monkeypatch.setattr(ASRModel, "restore_from", classmethod(spy))
    return calls


def test_archives_naming_classes_outside_the_allow_list_are_refused_before_any_restore(
        bundle, tiny_overrides, tmp_path, capsys, restores):
    """A .nemo whose config names a foreign `_target_`, as a model to evaluate or serve, in a bundle (hashes
    rewritten to match) and as a start point; a .ckpt start point whose config does: one clear error naming the key
    and the name, and NeMo is never asked to restore it."""
    import torch

    from streamtune.errors import UserError
    from streamtune.model.build import load_model
    from streamtune.stages import train
    from streamtune.stages.export.__main__ import main as export_main

    foreign = _repacked(bundle / "model.nemo", tmp_path / "foreign.nemo", FOREIGN)
    with pytest.raises(UserError, match=f"names encoder._target_: '{FOREIGN}', which is not one of the classes"):
        load_model(foreign)
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    shutil.copy(foreign, copy / "model.nemo")
    _rehashed(copy, "model.nemo")
    assert export_main(["verify", "--bundle", str(copy)]) == 1
    _verify_failed(capsys.readouterr().err, "model.nemo: does not load", f"encoder._target_: '{FOREIGN}'")
    code = train.main(["--config", str(DEMO_RECIPE), *tiny_overrides, f"model.init_from={foreign}",
                       f"run.output_dir={tmp_path / 'runs'}"])
    one_line_error(code, capsys.readouterr().err, f"encoder._target_: '{FOREIGN}'")
    ckpt = tmp_path / "start.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"cfg": {"target": "builtins.exec", "encoder": {}}}}, ckpt)
    code = train.main(["--config", str(DEMO_RECIPE), *tiny_overrides, f"model.init_from={ckpt}",
                       f"run.output_dir={tmp_path / 'runs'}"])
    one_line_error(code, capsys.readouterr().err, "names target: 'builtins.exec'")
    assert restores == [] and not (tmp_path / "runs").exists()
    # The same archive with its own encoder class restores (the check refuses names, not repacked archives).
    assert load_model(_repacked(bundle / "model.nemo", tmp_path / "own.nemo")) is not None and len(restores) == 1


def test_a_bundle_file_swapped_after_verify_is_never_loaded(bundle, tmp_path, monkeypatch, restores):
    """serve verifies a bundle, then streams with the model verify decoded the sample with: model.nemo is read
    once, hashed as read and checked against the manifest, and NeMo restores that private copy. A model.nemo
    replaced by another valid archive between the file check and the load is refused, never restored."""
    from streamtune.errors import UserError
    from streamtune.export import verify
    from streamtune.serve.server import load_bundle_model

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    real = verify.check_files

    def then_swap(*args, **kwargs):
        manifest = real(*args, **kwargs)
        _repacked(bundle / "model.nemo", copy / "model.nemo")  # a valid archive of other bytes
        return manifest

    monkeypatch.setattr(verify, "check_files", then_swap)
    with pytest.raises(UserError, match="model.nemo: does not load .*not the .* it was verified with"):
        load_bundle_model(copy, None, "cpu")
    assert restores == []
    monkeypatch.setattr(verify, "check_files", real)
    shutil.copy(bundle / "model.nemo", copy / "model.nemo")
    model, mode = load_bundle_model(copy, None, "cpu")
    assert len(restores) == 1 and not restores[0].startswith(str(copy)), "NeMo restores the private copy"


def test_pipes_and_devices_in_a_bundle_are_refused_not_read(bundle, tmp_path, capsys):
    """A FIFO in place of a bundle file would block any reader forever: verify names it without opening it, and
    a model path that is a FIFO is refused the same way."""
    import threading

    from streamtune.errors import UserError
    from streamtune.model.build import load_model
    from streamtune.stages.export.__main__ import main as export_main

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "tokens.txt").unlink()
    os.mkfifo(copy / "tokens.txt")
    result = []
    worker = threading.Thread(target=lambda: result.append(export_main(["verify", "--bundle", str(copy)])),
                              daemon=True)
    worker.start()
    worker.join(120)
    assert result == [1], "verify blocked on the pipe" if worker.is_alive() else result
    _verify_failed(capsys.readouterr().err, "tokens.txt: not a regular file")
    with pytest.raises(UserError, match="is not a regular file"):
        load_model(copy / "tokens.txt")


def test_online_wandb_without_credentials_is_one_line_before_any_run_dir(tiny_overrides, tmp_path, capsys,
                                                                         monkeypatch):
    from streamtune.stages import train

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "")
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    code = train.main(["--config", str(DEMO_RECIPE), *tiny_overrides, "logger.wandb_mode=online",
                       f"run.output_dir={tmp_path / 'runs'}"])
    one_line_error(code, capsys.readouterr().err, "wandb login", "logger.wandb_mode=offline")
    assert not (tmp_path / "runs").exists()


@pytest.mark.e2e
def test_two_auto_resumers_of_one_run_name_the_second_refuses(tiny_overrides, tmp_path):
    """Two processes (the lock is per process): the second is refused while the first trains."""
    import subprocess
    import sys

    args = ["train.py", "--config", str(DEMO_RECIPE), *tiny_overrides, "trainer.max_steps=400",
            "trainer.val_check_interval=400", "run.resume=auto", f"run.output_dir={tmp_path}"]
    first = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        for line in first.stdout:  # wait until it holds its run dir
            if line.startswith("run dir:"):
                break
        second = run_entry(*args)
        one_line_error(second.returncode, second.stderr, "run 'tiny_cpu' (run.resume=auto) is in use by train.py pid")
    finally:
        first.kill()
        first.wait()
