"""data_prep sources and validation: real files in, validated cuts out, every rejection with its reason."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from lhotse import CutSet

from streamtune.stages.data_prep.__main__ import main
from tests.helpers import loose_audio_files, shar_cuts


@pytest.fixture(scope="module")
def speech(corpus):
    """(path, text, duration) of a few generated 16 kHz utterances."""
    cuts = CutSet.from_file(corpus / "cuts_train.jsonl.gz")
    return [(Path(c.recording.sources[0].source), c.supervisions[0].text, c.duration) for c in list(cuts)[:6]]


def _write_manifest(path: Path, lines: list) -> Path:
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else (json.dumps(line) + "\n").encode())
    return path


def _rejected(out: Path, run: str = "train") -> list[dict]:
    return [json.loads(line) for line in open(out / f"rejected_{run}.jsonl")]


def _report(out: Path, run: str = "train") -> dict:
    return json.loads((out / f"report_{run}.json").read_text())


def test_nemo_manifest_relative_paths_offsets_and_custom_fields(speech, tmp_path):
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    for path, _, _ in speech:
        shutil.copy(path, audio_dir / path.name)
    (p0, t0, d0), (p1, t1, d1) = speech[0], speech[1]
    _write_manifest(tmp_path / "train.jsonl", [
        {"audio_filepath": f"audio/{p0.name}", "duration": d0, "text": t0, "source_lang": "en", "domain": "home"},
        {"audio_filepath": str(audio_dir / p1.name), "duration": 0.5, "offset": 0.25, "text": t1, "source_lang": "en"},
        {"audio_filepath": f"audio/{p1.name}", "duration": d1, "text": t1, "source_lang": "de"},
    ])
    out = tmp_path / "out"
    assert main(["nemo", "--manifest", str(tmp_path / "*.jsonl"), "--out", str(out), "--lang", "en"]) == 0
    cuts = {c.id: c for c in CutSet.from_file(out / "cuts_train.jsonl.gz")}
    first = cuts[f"audio__{p0.stem}"]  # ids: the path relative to the manifest's folder
    assert first.supervisions[0].text == t0 and abs(first.duration - d0) < 1e-6
    assert first.custom["domain"] == "home" and first.custom["source_lang"] == "en"
    sliced = cuts[f"audio__{p1.stem}-250"]
    assert sliced.start == 0.25 and sliced.duration == 0.5
    assert sliced.load_audio().shape[-1] == 8000
    report = _report(out)
    assert (report["read"], report["kept"], report["rejected"]) == (3, 2, 1)
    assert report["rejected_reasons"] == {"other_language": 1}


def test_granary_answer_key_and_text_normalisation(speech, tmp_path):
    p0, _, d0 = speech[0]
    manifest = _write_manifest(tmp_path / "g.jsonl", [
        {"audio_filepath": str(p0), "duration": d0, "answer": "  Turn  ON the\tLamp,  please! "}])
    out = tmp_path / "out"
    assert main(["granary", "--manifest", str(manifest), "--text-key", "answer", "--out", str(out)]) == 0
    (cut,) = CutSet.from_file(out / "cuts_train.jsonl.gz")
    assert cut.supervisions[0].text == "Turn ON the Lamp, please!"  # case and punctuation kept by default
    out2 = tmp_path / "out2"
    main(["granary", "--manifest", str(manifest), "--text-key", "answer", "--out", str(out2), "--lowercase",
          "--strip-punctuation"])
    (cut,) = CutSet.from_file(out2 / "cuts_train.jsonl.gz")
    assert cut.supervisions[0].text == "turn on the lamp please"


def test_folder_with_txt_and_with_tsv(speech, tmp_path):
    txt_dir, tsv_dir = tmp_path / "txt", tmp_path / "tsv"
    txt_dir.mkdir(), tsv_dir.mkdir()
    rows = ["path\ttext"]
    for path, text, _ in speech[:3]:
        shutil.copy(path, txt_dir / path.name)
        (txt_dir / path.name).with_suffix(".txt").write_text(text + "\n")
        shutil.copy(path, tsv_dir / path.name)
        rows.append(f"{path.name}\t{text}")
    (tsv_dir / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    for name, extra in (("txt", []), ("tsv", ["--transcripts", str(tsv_dir / "transcripts.tsv")])):
        out = tmp_path / f"out_{name}"
        assert main(["folder", "--dir", str(tmp_path / name), "--out", str(out), *extra]) == 0
        cuts = CutSet.from_file(out / "cuts_train.jsonl.gz")
        assert sorted(c.supervisions[0].text for c in cuts) == sorted(t for _, t, _ in speech[:3])


def test_wrong_rate_mono_is_resampled_lazily(speech, tmp_path):
    import soxr

    path, text, _ = speech[0]
    audio, rate = sf.read(path, dtype="float32")
    low = tmp_path / "low.wav"
    sf.write(low, soxr.resample(audio, rate, 8000), 8000)
    (tmp_path / "low.txt").write_text(text)
    out = tmp_path / "out"
    assert main(["folder", "--dir", str(tmp_path), "--out", str(out)]) == 0
    (cut,) = CutSet.from_file(out / "cuts_train.jsonl.gz")
    assert cut.sampling_rate == 16000
    assert [t.to_dict()["kwargs"]["source_sampling_rate"] for t in cut.recording.transforms] == [8000]  # lazy
    assert abs(cut.load_audio().shape[-1] - round(cut.duration * 16000)) <= 1
    assert _report(out)["notes"] == {"resampled_8000hz": 1}


def test_bad_inputs_each_rejected_with_a_distinct_reason(speech, corpus, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    good_path, good_text, good_dur = speech[0]
    audio, rate = sf.read(good_path, dtype="float32")
    truncated = bad / "truncated.wav"
    data = good_path.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # header promises twice what is there
    corrupt = bad / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEthis is not audio" * 10)
    stereo8k = bad / "stereo8k.wav"
    sf.write(stereo8k, np.stack([audio[::2], audio[::2]], axis=1), 8000)
    empty = bad / "empty.wav"
    sf.write(empty, np.zeros(0, dtype="float32"), 16000)
    nan = bad / "nan.wav"
    nan_audio = audio.copy()
    nan_audio[100:200] = np.nan
    sf.write(nan, nan_audio, 16000, subtype="FLOAT")
    silent = bad / "silent.wav"
    sf.write(silent, np.zeros(16000, dtype="float32"), 16000)
    dup, no_text = bad / "dup.wav", bad / "no_text.wav"
    shutil.copy(good_path, dup)
    shutil.copy(good_path, no_text)

    def line(path, text=good_text, duration=good_dur):
        return {"audio_filepath": str(path), "duration": duration, "text": text}

    expected = {  # manifest line -> reason
        1: None,  # a good line: kept
        2: "missing_audio",
        3: "duration_mismatch",
        4: "undecodable_audio",
        5: "multichannel_audio",
        6: "empty_audio",
        7: "nonfinite_samples",
        8: "silent_audio",
        9: "empty_text",
        10: "out_of_alphabet",
        11: None,
        12: "duplicate_id",
        13: "malformed_line",
        14: "invalid_utf8",
    }
    manifest = _write_manifest(bad / "bad.jsonl", [
        line(good_path), line(bad / "missing.wav"), line(truncated), line(corrupt, duration=1.0),
        line(stereo8k, duration=len(audio[::2]) / 8000), line(empty, duration=1.0), line(nan), line(silent,
                                                                                                    duration=1.0),
        line(no_text, text="   "), line(dup, text="Ünïcode ©"), line(dup), line(dup),
        b'{"audio_filepath": "x.wav", "duration": 1.0, "text": "unterminated\n',
        b'{"audio_filepath": "y.wav", "text": "caf\xe9"}\n',
    ])
    out = tmp_path / "out"
    assert main(["nemo", "--manifest", str(manifest), "--out", str(out),
                 "--tokenizer", str(corpus / "tokenizer"), "--min-duration", "0.0"]) == 0
    got = {}
    for rej in _rejected(out):
        line_no = int(re.search(r"bad\.jsonl:(\d+)", rej["detail"]).group(1))
        got[line_no] = rej["reason"]
        assert len(rej["detail"]) > 20  # readable, names the item
    assert got == {k: v for k, v in expected.items() if v}
    assert len(set(got.values())) == len(got), "each bad input has its own reason"
    report = _report(out)
    assert report["read"] == 14 and report["kept"] == 2 and report["kept"] + report["rejected"] == report["read"]
    assert len(CutSet.from_file(out / "cuts_train.jsonl.gz")) == 2


def test_nothing_valid_or_missing_input_exits_nonzero(tmp_path, capsys):
    manifest = _write_manifest(tmp_path / "m.jsonl", [{"audio_filepath": "nope.wav", "duration": 1.0, "text": "a"}])
    assert main(["nemo", "--manifest", str(manifest), "--out", str(tmp_path / "o")]) == 2
    assert "nothing valid remains of 1 items" in capsys.readouterr().err
    assert _rejected(tmp_path / "o")[0]["reason"] == "missing_audio"  # the reason is still written
    assert main(["nemo", "--manifest", str(tmp_path / "absent.jsonl"), "--out", str(tmp_path / "o2")]) == 2
    assert "absent.jsonl' does not exist" in capsys.readouterr().err


def test_shar_export_is_read_by_nemo_lhotse_dataloader(speech, corpus, tmp_path):
    # The training split: its tokenizer spells every character of it (dev and test may hold one it never saw).
    out = tmp_path / "out"
    assert main(["lhotse", "--cuts", str(corpus / "cuts_train.jsonl.gz"), "--out", str(out), "--shar",
                 "--shar-shard-size", "16"]) == 0
    texts = _nemo_loader_texts(out / "shar" / "train", corpus / "tokenizer" / "tokenizer.model")
    expected = [c.supervisions[0].text for c in CutSet.from_file(corpus / "cuts_train.jsonl.gz")]
    assert sorted(texts) == sorted(expected)


def _nemo_loader_texts(shar: Path, tokenizer_model: Path) -> list[str]:
    """The transcripts NeMo's own Lhotse dataloader reads from a Shar dir, as its tokenizer gives them back."""
    from nemo.collections.asr.data.audio_to_text_lhotse import LhotseSpeechToTextBpeDataset
    from nemo.collections.common.data.lhotse.dataloader import get_lhotse_dataloader_from_config
    from nemo.collections.common.tokenizers import SentencePieceTokenizer

    tokenizer = SentencePieceTokenizer(str(tokenizer_model))
    loader = get_lhotse_dataloader_from_config(
        {"shar_path": str(shar), "batch_size": 8, "num_workers": 0, "shuffle": False,
         "sample_rate": 16000, "seed": 0, "shard_seed": 0, "force_finite": True},
        global_rank=0, world_size=1,
        dataset=LhotseSpeechToTextBpeDataset(tokenizer=tokenizer, return_cuts=True), tokenizer=tokenizer,
    )
    return [tokenizer.ids_to_text(t[:n].tolist()) for batch in loader for t, n in zip(batch[2], batch[3])]


def test_nemo_tarred_shards(speech, corpus, tmp_path):
    import tarfile

    for shard, chunk in enumerate((speech[:3], speech[3:5])):
        with tarfile.open(tmp_path / f"audio_{shard}.tar", "w") as tar:
            for path, _, _ in chunk:
                tar.add(path, arcname=path.name)
        entries = [{"audio_filepath": p.name, "duration": d, "text": t, "shard_id": shard} for p, t, d in chunk]
        if shard == 1:
            entries.append({"audio_filepath": "not_in_tar.wav", "duration": 1.0, "text": "lost"})
            entries = entries[1:]  # speech[3] stays in the tar without a manifest entry
        _write_manifest(tmp_path / f"manifest_{shard}.json", entries)
    out = tmp_path / "out"
    assert main(["nemo-tarred", "--manifest", str(tmp_path / "manifest_*.json"), "--tar", str(tmp_path / "audio_*.tar"),
                 "--out", str(out), "--num-jobs", "1"]) == 0
    assert not loose_audio_files(out), "the audio stays in tars: the input's, and the Shar shards'"
    cuts = shar_cuts(out)
    expected = {p.stem: t for p, t, _ in speech[:3] + speech[4:5]}
    assert {k: c.supervisions[0].text for k, c in cuts.items()} == expected
    for path, _, _ in speech[:3] + speech[4:5]:  # whole 16 kHz mono WAV members are copied, not re-encoded
        assert cuts[path.stem].recording.sources[0].source == path.read_bytes()
    reasons = sorted(r["reason"] for r in _rejected(out))
    assert reasons == ["missing_audio", "no_manifest_entry"]
    # NeMo's own loader reads the Shar shards back.
    texts = _nemo_loader_texts(out / "shar" / "train", corpus / "tokenizer" / "tokenizer.model")
    assert sorted(texts) == sorted(expected.values())


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet"])
def test_hf_dataset_with_embedded_audio_bytes(speech, tmp_path, layout):
    import datasets

    rows = {"audio": [{"bytes": p.read_bytes(), "path": p.name} for p, _, _ in speech[:4]],
            "sentence": [t for _, t, _ in speech[:4]], "utt": [f"u{i}" for i in range(4)], "speaker": ["a", "b", "a",
                                                                                                       "b"]}
    ds = datasets.Dataset.from_dict(rows).cast_column("audio", datasets.Audio(decode=False))
    if layout == "save_to_disk":
        ds.save_to_disk(str(tmp_path / "ds"))
        source = tmp_path / "ds"
    else:
        source = tmp_path / "ds.parquet"
        ds.to_parquet(str(source))
    out = tmp_path / "out"
    assert main(["hf", "--dataset", str(source), "--text-column", "sentence", "--id-column", "utt",
                 "--out", str(out), "--num-jobs", "1"]) == 0
    assert not loose_audio_files(out)
    cuts = shar_cuts(out)
    assert {k: c.supervisions[0].text for k, c in cuts.items()} == {f"u{i}": speech[i][1] for i in range(4)}
    assert cuts["u1"].custom["speaker"] == "b"
    assert abs(cuts["u0"].duration - speech[0][2]) < 1e-3


def test_ratio_split_is_deterministic_and_keeps_speakers_whole(corpus, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["lhotse", "--cuts", str(corpus / "cuts_train.jsonl.gz"), "--out", str(out),
            "--split-ratio", "train=0.6,dev=0.2,test=0.2", "--split-key", "speaker", "--num-jobs", "3"]
    assert main(args) == 0
    splits = {name: CutSet.from_file(out / f"cuts_{name}.jsonl.gz") for name in ("train", "dev", "test")}
    speakers = {name: {c.supervisions[0].speaker for c in cuts} for name, cuts in splits.items()}
    assert not (speakers["train"] & speakers["dev"]) and not (speakers["train"] & speakers["test"])
    assert sum(len(c) for c in splits.values()) == 48
    first = {name: [c.id for c in cuts] for name, cuts in splits.items()}
    assert main(args) == 0 and "up to date" in capsys.readouterr().out  # same inputs: skipped
    assert main([*args, "--force", "--num-jobs", "1"]) == 0  # redone serially: same assignment, same order
    assert {name: [c.id for c in CutSet.from_file(out / f"cuts_{name}.jsonl.gz")] for name in splits} == first
    report = _report(out, "train+dev+test")
    assert sum(report["kept_per_split"].values()) == 48 == sum(report["duration_histogram"]["counts"])
    from PIL import Image

    assert Image.open(out / "durations_train+dev+test.png").size == (640, 320)


def test_id_set_is_exact_for_many_ids():
    from streamtune.data.validate import IdSet

    ids = IdSet(capacity=8)
    assert all(ids.add(f"utt-{i}") for i in range(20000))
    assert not any(ids.add(f"utt-{i}") for i in range(0, 20000, 7))
    assert ids.size == 20000


def test_evaluation_reads_a_shar_dir_like_its_cuts_file(corpus, tmp_path):
    """data.dev / data.test may be Shar dirs: evaluation, parity and per-mode validation read them too."""
    from streamtune.data.reading import load_utterances

    assert main(["lhotse", "--cuts", str(corpus / "cuts_test.jsonl.gz"), "--out", str(tmp_path), "--split", "test",
                 "--shar", "--shar-shard-size", "3"]) == 0
    from_cuts = {u.id: u for u in load_utterances(tmp_path / "cuts_test.jsonl.gz")}
    from_shar = {u.id: u for u in load_utterances(tmp_path / "shar" / "test")}
    assert from_cuts.keys() == from_shar.keys()
    for key, u in from_cuts.items():
        assert u.text == from_shar[key].text
        assert np.abs(u.audio - from_shar[key].audio).max() < 1e-3  # flac round trip of 16-bit audio


def _tarred_corpus(speech, root: Path) -> Path:
    """Four NeMo tarred shards: a corrupt member, a member named with ``../``, an id that two shards hold, a tar cut
    in half."""
    import tarfile

    root.mkdir()
    shards = {0: [(p, p.name, t, d) for p, t, d in speech[:3]],
              1: [(speech[3][0], "../up.wav", "up", speech[3][2]),
                  (speech[0][0], speech[0][0].name, "again", speech[0][2])],
              2: [(p, p.name, t, d) for p, t, d in speech[4:6]],
              3: [(p, "x" + p.name, t, d) for p, t, d in speech[1:3]]}
    corrupt = root / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" * 7)
    shards[0].append((corrupt, "corrupt.wav", "broken", 1.0))
    for shard, members in shards.items():
        with tarfile.open(root / f"audio_{shard}.tar", "w") as tar:
            for path, name, _, _ in members:
                tar.add(path, arcname=name)
        _write_manifest(root / f"manifest_{shard}.json", [{"audio_filepath": Path(name).name, "duration": d, "text": t}
                                                          for _, name, t, d in members])
    corrupt.unlink()
    data = (root / "audio_2.tar").read_bytes()
    (root / "audio_2.tar").write_bytes(data[: len(data) * 3 // 4])
    return root


def test_two_tasks_and_merge_equal_one_run(speech, tmp_path, capsys):
    from tests.helpers import one_line_error

    corpus = _tarred_corpus(speech, tmp_path / "in")
    source = ["nemo-tarred", "--manifest", str(corpus / "manifest_*.json"), "--tar", str(corpus / "audio_*.tar")]
    one = tmp_path / "one"
    assert main(source + ["--out", str(one), "--num-jobs", "1"]) == 0
    two = tmp_path / "two"
    assert main(source + ["--out", str(two), "--shard-index", "0", "--num-shards", "2", "--num-jobs", "2"]) == 0
    capsys.readouterr()
    one_line_error(main(["merge", "--out", str(two)]), capsys.readouterr().err, "task-1-of-2", "unfinished")
    assert main(source + ["--out", str(two), "--shard-index", "1", "--num-shards", "2", "--num-jobs", "1"]) == 0
    assert main(["merge", "--out", str(two)]) == 0

    for out in (one, two):
        assert not loose_audio_files(out)
        assert sorted(p.name for p in (out / "shar" / "train").iterdir()) == [
            f"{field}.{i:06d}.{ext}" for field, ext in (("cuts", "jsonl.gz"), ("recording", "tar")) for i in range(4)]
    assert sorted(p.name for p in corpus.iterdir()) == [f"{kind}_{i}.{ext}" for kind, ext in (("audio", "tar"),
                                                                                             ("manifest", "json"))
                                                        for i in range(4)], "nothing is extracted"
    kept = {out: {k: c.supervisions[0].text for k, c in shar_cuts(out).items()} for out in (one, two)}
    assert kept[one] == kept[two]
    assert kept[one][speech[0][0].stem] == speech[0][1], "the first shard keeps an id two shards hold"
    assert kept[one]["up"] == "up" and "again" not in kept[one].values()
    assert _report(one) == _report(two)
    assert _rejected(one) == _rejected(two)
    reasons = sorted(r["reason"] for r in _rejected(one))
    assert reasons[:2] == ["corrupt_tar", "duplicate_id"] and "undecodable_audio" in reasons, reasons
    report = _report(one)
    assert report["kept"] + report["rejected"] == report["read"] == 10 and report["kept"] == len(kept[one])

    # A rerun of one task redoes only its own shards.
    stamps = {p.name: p.stat().st_mtime_ns for p in (two / "shards").glob("*.json")}
    assert main(source + ["--out", str(two), "--shard-index", "1", "--num-shards", "2", "--num-jobs", "1",
                          "--force"]) == 0
    assert main(["merge", "--out", str(two)]) == 0
    changed = {p.name for p in (two / "shards").glob("*.json") if p.stat().st_mtime_ns != stamps[p.name]}
    assert changed == {"000001.json", "000003.json"}
    assert {k: c.supervisions[0].text for k, c in shar_cuts(two).items()} == kept[one]
    assert _report(two) == _report(one)

    # A task of another split of the work overlaps this one's: named, not merged.
    assert main(source + ["--out", str(two), "--shard-index", "0", "--num-shards", "3", "--num-jobs", "1"]) == 0
    capsys.readouterr()
    one_line_error(main(["merge", "--out", str(two)]), capsys.readouterr().err, "task-0-of-2", "task-0-of-3",
                   "overlap")


def test_keep_tars_writes_manifests_nemo_reads_with_the_input_tars(speech, corpus, tmp_path, capsys):
    """--keep-tars: validated NeMo manifests naming the kept members of the input tars, nothing else written; one
    run and two tasks + merge agree; NeMo's tarred reader reads exactly the kept cuts (rejected members skipped)."""
    from nemo.collections.asr.data.audio_to_text_lhotse import LhotseSpeechToTextBpeDataset
    from nemo.collections.common.data.lhotse.dataloader import get_lhotse_dataloader_from_config
    from nemo.collections.common.tokenizers import SentencePieceTokenizer

    from streamtune.model.nemo_config import data_source
    from tests.helpers import one_line_error

    tarred = _tarred_corpus(speech, tmp_path / "in")
    source = ["nemo-tarred", "--manifest", str(tarred / "manifest_*.json"), "--tar", str(tarred / "audio_*.tar"),
              "--keep-tars", "--num-jobs", "1"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(source + ["--out", str(one)]) == 0
    for index in range(2):
        assert main(source + ["--out", str(two), "--shard-index", str(index), "--num-shards", "2"]) == 0
    assert main(["merge", "--out", str(two)]) == 0
    for out in (one, two):
        assert not loose_audio_files(out) and not list(out.rglob("*.tar")), "no audio is copied"
    assert _report(one) == _report(two) and _rejected(one) == _rejected(two)
    folder = one / "nemo" / "train"
    entries = [json.loads(line) for m in sorted(folder.glob("manifest_*.json")) for line in open(m)]
    assert {e["cut_id"] for e in entries} == {e["cut_id"] for m in sorted((two / "nemo" / "train").glob("*_*.json"))
                                              for e in map(json.loads, open(m))}
    assert "../up.wav" in {e["audio_filepath"] for e in entries}, "the member's own name, as NeMo matches it"
    assert len(entries) == _report(one)["kept"] == 7

    tokenizer = SentencePieceTokenizer(str(corpus / "tokenizer" / "tokenizer.model"))
    loader = get_lhotse_dataloader_from_config(
        {**data_source([[str(folder), 1.0]]), "batch_size": 4, "num_workers": 0, "shuffle": False,
         "sample_rate": 16000, "seed": 0, "shard_seed": 0, "force_finite": True},
        global_rank=0, world_size=1,
        dataset=LhotseSpeechToTextBpeDataset(tokenizer=tokenizer, return_cuts=True), tokenizer=tokenizer,
    )
    read = [c.custom["cut_id"] for batch in loader for c in batch[-1]]
    assert sorted(read) == sorted(e["cut_id"] for e in entries)
    # A tar without a shard number in its name cannot be paired with a manifest by NeMo: one line, up front.
    shutil.copy(tarred / "audio_0.tar", tmp_path / "audio.tar")
    shutil.copy(tarred / "manifest_0.json", tmp_path / "manifest.json")
    capsys.readouterr()
    code = main(["nemo-tarred", "--manifest", str(tmp_path / "manifest.json"), "--tar", str(tmp_path / "audio.tar"),
                 "--keep-tars", "--out", str(tmp_path / "unnumbered")])
    one_line_error(code, capsys.readouterr().err, "audio.tar has none")


class _Id:
    def __init__(self, cut_id: str):
        self.id, self.supervisions, self.custom = cut_id, [], {}


def test_ratio_split_of_sharded_tasks_equals_one_run(speech, tmp_path):
    """--split-ratio with sharded tasks: one Shar dir per split, and two tasks + merge keep what one run keeps."""
    from streamtune.data.validate import split_by_ratio

    tarred = _tarred_corpus(speech, tmp_path / "in")
    source = ["nemo-tarred", "--manifest", str(tarred / "manifest_*.json"), "--tar", str(tarred / "audio_*.tar"),
              "--num-jobs", "1"]
    assert main(source + ["--out", str(tmp_path / "all")]) == 0
    # A ratio that puts some of the kept ids in each split (a split is a hash of the id: fixed, not random).
    ids = list(shar_cuts(tmp_path / "all"))
    ratio = next(f"train={k / 10:g},dev={1 - k / 10:g}" for k in range(1, 10)
                 if len({split_by_ratio({"train": k / 10, "dev": 1 - k / 10})(_Id(i)) for i in ids}) == 2)
    source += ["--split-ratio", ratio]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(source + ["--out", str(one)]) == 0
    for index in range(2):
        assert main(source + ["--out", str(two), "--shard-index", str(index), "--num-shards", "2"]) == 0
    assert main(["merge", "--out", str(two)]) == 0
    run = "train+dev"
    assert _report(one, run) == _report(two, run) and _rejected(one, run) == _rejected(two, run)
    report = _report(one, run)
    kept = {split: set(shar_cuts(one, split)) for split in ("train", "dev")}
    assert kept == {split: set(shar_cuts(two, split)) for split in ("train", "dev")}
    assert all(kept.values()) and not kept["train"] & kept["dev"], "every split has cuts, none in both"
    assert {split: len(members) for split, members in kept.items()} == report["kept_per_split"]
    assert kept["train"] | kept["dev"] == set(ids) and report["kept"] + report["rejected"] == report["read"]
