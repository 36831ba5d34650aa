"""A synthetic speech corpus from espeak-ng: the demo's and the tests' data.

Sentences are drawn from a word list; each split gets *its own* sentences
(no sentence is in two splits), spoken by several espeak-ng voices at several
rates and pitches, resampled to 16 kHz mono, and written as Lhotse cuts.
Everything is deterministic from ``seed``. The word list and voices default to
the demo's (``WORDS``, ``VOICES``); pass others to make a second domain
(``--words-file``, ``--voices`` on the CLI).

With ``word_timings`` (``--word-timings``) each word is spoken on its own, its
silence trimmed, and the words joined with short pauses, so that every word's
start and end are known exactly; they are stored as the supervision's Lhotse
``word`` alignment (evaluate.py measures emission delay against them). That
speech is more clipped than a sentence read in one go; use it for timing sets.

Transcripts are *written* the way the target model writes (``style="written"``, the default): a capital
at the start of a sentence, names always capitalised, end punctuation (``.``, ``?`` with espeak-ng's rising
intonation, ``!``), a comma where espeak-ng pauses, number words as digits, possessives, contractions and
hyphenated words (``mother's``, ``don't``, ``e-mail``), and now and then a ``[noise]`` tag where a burst of
noise is in the audio. ``style="plain"`` gives lower-case words without punctuation (the corpora of earlier
versions, for comparisons).

Long utterances (``--min-words 25 --max-words 110``: tens of seconds) are read as paragraphs: an
utterance of more than ``PHRASE_WORDS`` words is spoken in phrases of 6–14 words with a short pause
between them, where a reader would breathe (a comma for espeak-ng, written in the transcript in the
written style, left out in the plain one).
"""

from __future__ import annotations

import hashlib
import io
import random
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from streamtune.data.stamp import Stamp
from streamtune.errors import UserError

SAMPLE_RATE = 16000

# A small home-and-errands domain: 96 words with varied lengths and sounds.
WORDS = """
the a my your this that one two three four five six seven eight nine ten
red green blue yellow black white small large old new
turn open close start stop play pause move bring take find show call send
light lamp door window music radio kitchen garden table chair phone message
coffee water bread apple orange paper letter picture camera printer heater fan
now later today tomorrow morning evening please quickly slowly again
on off up down in out near behind under above
mother father sister brother doctor teacher neighbour friend
""".split()

# espeak-ng voice + variant pairs (variants change formants and pitch range).
VOICES = [
    "en-us", "en-us+f3", "en-gb+m3", "en-gb-scotland+f2", "en-gb-x-rp+m7", "en-029+f4", "en-us-nyc+m2",
]
RATES_WPM = [140, 160, 180]
PITCHES = [35, 50, 65]

STYLES = ("written", "plain")
# What the written style adds to the demo's word list: names (always capitalised), contractions, hyphenated words.
WRITTEN_WORDS = ["Anna", "Tom", "Monday", "Friday", "don't", "it's", "let's", "e-mail", "re-open"]
_DIGITS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_PERSONS = frozenset("mother father sister brother doctor teacher neighbour friend".split())
TAG = "[noise]"  # a non-speech event: a burst of noise in the audio where the tag is in the transcript


@dataclass(frozen=True)
class Utterance:
    id: str
    split: str
    text: str
    voice: str
    rate_wpm: int
    pitch: int
    style: str = "plain"


def make_sentences(rng: random.Random, count: int, exclude: set[str], min_words: int, max_words: int,
                   words: list[str] = WORDS) -> list[str]:
    sentences: list[str] = []
    seen = set(exclude)
    attempts = 0
    while len(sentences) < count:
        attempts += 1
        if attempts > count * 100:
            raise UserError("could not draw enough distinct sentences; lower the counts or widen the word range")
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))
        if sentence not in seen:
            seen.add(sentence)
            sentences.append(sentence)
    return sentences


def write_sentence(words: list[str], rng: random.Random) -> str:
    """The transcript of the spoken ``words`` as the target model writes it (the written style)."""
    out = [_DIGITS.get(w, w) for w in words]
    for k, word in enumerate(out[:-1]):
        if word in _PERSONS and rng.random() < 0.3:
            out[k] = f"{word}'s"
    if len(out) >= 4 and rng.random() < 0.3:
        out[rng.randint(1, len(out) - 3)] += ","  # espeak-ng pauses there
    out[0] = out[0][:1].upper() + out[0][1:]
    draw = rng.random()
    out[-1] += "?" if draw < 0.15 else "!" if draw < 0.25 else "."
    text = " ".join(out)
    draw = rng.random()
    return f"{TAG} {text}" if draw < 0.03 else f"{text} {TAG}" if draw < 0.06 else text


def write_paragraph(words: list[str], utt_id: str) -> str:
    """A long utterance in the written style: commas where the reader pauses (see ``phrase_pauses``)."""
    out = [_DIGITS.get(w, w) for w in words]
    for k in phrase_pauses(len(out), utt_id):
        out[k] += ","
    out[0] = out[0][:1].upper() + out[0][1:]
    return " ".join(out) + "."


def phrase_pauses(n_words: int, utt_id: str) -> list[int]:
    """Indices of the words after which a long utterance pauses: every 6–14 words, drawn per utterance (so the
    plan, and every other utterance, is unchanged)."""
    if n_words <= PHRASE_WORDS:
        return []
    rng = random.Random(utt_id)
    pauses, at = [], rng.randint(6, PHRASE_WORDS)
    while at < n_words:
        pauses.append(at - 1)
        at += rng.randint(6, PHRASE_WORDS)
    return pauses


def plan_corpus(counts: dict[str, int], seed: int, min_words: int = 2, max_words: int = 5, words: list[str] = WORDS,
                voices: list[str] = VOICES, id_prefix: str = "synth", style: str = "written") -> list[Utterance]:
    """Decide every utterance (text, voice, rate, pitch) from the seed; splits never share a sentence (as spoken
    words). The written style draws its marks from the same generator, so a plain plan is what it always was."""
    if style not in STYLES:
        raise UserError(f"style must be one of {', '.join(STYLES)}, not '{style}'")
    rng = random.Random(seed)
    used: set[str] = set()
    plan = []
    for split, count in counts.items():
        sentences = make_sentences(rng, count, used, min_words, max_words, words)
        used.update(sentences)
        for i, sentence in enumerate(sentences):
            utt_id = f"{id_prefix}-{split}-{i:05d}"
            text = sentence
            if style == "written":
                spoken = sentence.split()
                text = write_sentence(spoken, rng) if len(spoken) <= PHRASE_WORDS else write_paragraph(spoken, utt_id)
            plan.append(Utterance(id=utt_id, split=split, text=text, voice=rng.choice(voices),
                                  rate_wpm=rng.choice(RATES_WPM), pitch=rng.choice(PITCHES), style=style))
    return plan


def espeak_available() -> bool:
    return shutil.which("espeak-ng") is not None


def read_words(path: str | Path) -> list[str]:
    """A word list file: words separated by whitespace, ``#`` starts a comment; duplicates are dropped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"cannot read word list {path}: {err.strerror}") from None
    words = list(dict.fromkeys(w for line in lines for w in line.split("#", 1)[0].split()))
    if len(words) < 2:
        raise UserError(f"word list {path} has {len(words)} distinct words; it needs at least 2")
    return words


def check_voices(voices: list[str]) -> None:
    """Fail early, naming the voice, when espeak-ng does not know one."""
    if not voices:
        raise UserError("no voices given")
    for voice in voices:
        proc = subprocess.run(["espeak-ng", "-v", voice, "-q", "x"], capture_output=True, check=False)
        if proc.returncode != 0:
            raise UserError(f"espeak-ng has no voice '{voice}' (see `espeak-ng --voices=en`, variants as VOICE+f3)")


def _speak(utt: Utterance, text: str) -> np.ndarray:
    import soxr

    cmd = ["espeak-ng", "-v", utt.voice, "-s", str(utt.rate_wpm), "-p", str(utt.pitch), "--stdout", text]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0 or not proc.stdout:
        raise RuntimeError(f"espeak-ng failed for {utt.id}: {proc.stderr.decode(errors='replace').strip()}")
    audio, rate = sf.read(io.BytesIO(proc.stdout), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    return audio


def noise_burst(utt_id: str) -> np.ndarray:
    """What a ``[noise]`` tag stands for: 0.3 s of noise at about -26 dBFS, drawn from the utterance id."""
    rng = np.random.default_rng(int(hashlib.sha256(utt_id.encode()).hexdigest()[:8], 16))
    return (0.05 * rng.standard_normal(int(0.3 * SAMPLE_RATE))).astype(np.float32)


def synthesize(utt: Utterance) -> np.ndarray:
    """Speak one utterance with espeak-ng and return float32 16 kHz mono samples."""
    # A little silence either side, as in recorded speech.
    pad = np.zeros(int(0.1 * SAMPLE_RATE), dtype=np.float32)
    pieces = [pad, _speak(utt, spoken_text(utt)), pad]
    if utt.text.startswith(TAG):
        pieces[:0] = [pad, noise_burst(utt.id)]
    if utt.text.endswith(TAG):
        pieces += [noise_burst(utt.id), pad]
    return np.concatenate(pieces)


WORD_GAP_S = 0.06
PHRASE_WORDS = 14


def spoken_words(utt: Utterance) -> list[str]:
    """The transcript's words that are spoken (tags are sounds, not words)."""
    return [w for w in utt.text.split() if w != TAG]


def spoken_text(utt: Utterance) -> str:
    """What espeak-ng reads: the transcript without tags; a plain long utterance gets a comma (a pause) every
    6–14 words, where the written style has them in the transcript already."""
    words = spoken_words(utt)
    if utt.style == "plain":
        for k in phrase_pauses(len(words), utt.id):
            words[k] += ","
    return " ".join(words)


def synthesize_words(utt: Utterance) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Speak word by word: samples and ``(word, start_s, end_s)`` of every word (silence trimmed to 1 % of peak)."""
    pad = np.zeros(int(0.1 * SAMPLE_RATE), dtype=np.float32)
    gap = np.zeros(int(WORD_GAP_S * SAMPLE_RATE), dtype=np.float32)
    pieces, timings, at = [pad], [], len(pad)
    for k, word in enumerate(spoken_words(utt)):
        audio = _speak(utt, word)
        loud = np.flatnonzero(np.abs(audio) > 0.01 * float(np.abs(audio).max()))
        audio = audio[loud[0]: loud[-1] + 1] if len(loud) else audio
        if k:
            pieces.append(gap)
            at += len(gap)
        timings.append((word, at / SAMPLE_RATE, (at + len(audio)) / SAMPLE_RATE))
        pieces.append(audio)
        at += len(audio)
    pieces.append(pad)
    return np.concatenate(pieces), timings


def prepare_synthetic(
    out_dir: str | Path,
    num_train: int = 3000,
    num_dev: int = 40,
    num_test: int = 60,
    seed: int = 0,
    num_jobs: int = 2,
    min_words: int = 2,
    max_words: int = 5,
    force: bool = False,
    words: list[str] | None = None,
    voices: list[str] | None = None,
    id_prefix: str = "synth",
    word_timings: bool = False,
    style: str = "written",
) -> dict[str, Path]:
    """Generate the corpus into ``out_dir``; returns ``{split: cuts_path}``.

    ``words`` / ``voices`` default to ``WORDS`` / ``VOICES`` (plus ``WRITTEN_WORDS`` in the written style);
    ``style`` is ``written`` (the target model's way) or ``plain``; ``id_prefix`` names the cuts
    (``<prefix>-<split>-00000``), so that two generated corpora can be mixed without clashing ids.

    Re-running with the same arguments reuses the finished corpus (``force`` redoes it).
    """
    from lhotse import CutSet, Recording, SupervisionSegment
    from lhotse.cut import MonoCut
    from lhotse.supervision import AlignmentItem

    if not espeak_available():
        raise UserError("espeak-ng is not installed; run `make setup` (or apt-get install espeak-ng)")
    words = list(words or (WORDS + WRITTEN_WORDS if style == "written" else WORDS))
    voices = list(voices or VOICES)
    if voices != VOICES:
        check_voices(voices)
    out_dir = Path(out_dir)
    counts = {"train": num_train, "dev": num_dev, "test": num_test}
    counts = {k: v for k, v in counts.items() if v > 0}
    # The key of the demo's defaults is unchanged by the later options: a new option joins the key only when set.
    extra = (() if id_prefix == "synth" else (id_prefix,)) + (("word_timings",) if word_timings else ()) \
        + (("phrases",) if max_words > PHRASE_WORDS else ()) + ((style,) if style != "plain" else ())
    key_parts = (sorted(counts.items()), seed, min_words, max_words, words, voices) + extra
    key = hashlib.sha256(repr(key_parts).encode()).hexdigest()
    stamp = Stamp(out_dir, "synthetic")
    cuts_paths = {split: out_dir / f"cuts_{split}.jsonl.gz" for split in counts}
    if not force and stamp.up_to_date(key, cuts_paths.values()):
        print(f"synthetic corpus in {out_dir} is up to date (use --force to regenerate)")
        return cuts_paths
    stamp.start()

    plan = plan_corpus(counts, seed, min_words, max_words, words, voices, id_prefix, style)
    audio_dir = out_dir / "audio"
    audio_dir.mkdir(parents=True, exist_ok=True)

    def make_one(utt: Utterance) -> MonoCut:
        path = audio_dir / f"{utt.id}.wav"
        audio, timings = synthesize_words(utt) if word_timings else (synthesize(utt), None)
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")
        rec = Recording.from_file(path, recording_id=utt.id)
        alignment = None
        if timings:
            alignment = {"word": [AlignmentItem(symbol=w, start=round(a, 4), duration=round(b - a, 4))
                                  for w, a, b in timings]}
        sup = SupervisionSegment(
            id=utt.id, recording_id=utt.id, start=0.0, duration=rec.duration, text=utt.text, language="en",
            speaker=f"{utt.voice}/{utt.rate_wpm}/{utt.pitch}", alignment=alignment,
        )
        cut = MonoCut(id=utt.id, start=0.0, duration=rec.duration, channel=0, recording=rec, supervisions=[sup])
        cut.custom = {"voice": utt.voice, "rate_wpm": utt.rate_wpm, "pitch": utt.pitch}
        return cut

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = lambda it, **_: it  # noqa: E731
    # espeak-ng runs as a subprocess, so threads are enough to keep every core busy.
    with ThreadPoolExecutor(max_workers=max(1, num_jobs)) as pool:
        cuts = list(tqdm(pool.map(make_one, plan), total=len(plan), desc="espeak-ng", mininterval=2))
    for split in counts:
        CutSet.from_cuts(c for c, u in zip(cuts, plan) if u.split == split).to_file(cuts_paths[split])
    stamp.done(key)
    total_s = sum(c.duration for c in cuts)
    print(f"wrote {len(cuts)} utterances ({total_s / 3600:.2f} h) to {out_dir}: " + ", ".join(f"{k}={v}" for k,
                                                                                              v in counts.items()))
    return cuts_paths
