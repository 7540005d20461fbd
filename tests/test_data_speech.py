"""Synthesized speech corpus: sentence extraction, TTS synthesis, the on-disk cache, splits and crops."""

import json
import shutil
import threading

import numpy as np
import pytest
import soundfile as sf
import torch

from vqkit.data import speech, speech_synth
from vqkit.data.speech import (
    SPLITS,
    SpeechCorpus,
    SpeechCorpusConfig,
    SpeechCrops,
    default_cache_dir,
)
from vqkit.data.speech_plan import plan_corpus
from vqkit.data.speech_synth import (
    HELDOUT_SPEAKERS,
    SAMPLE_RATE,
    SPEAKERS,
    get_speaker,
    synthesize,
    trim_silence,
)
from vqkit.data.speech_text import (
    generated_sentences,
    is_plain_sentence,
    normalize_transcript,
    python_doc_sentences,
)

needs_engines = pytest.mark.skipif(
    shutil.which("espeak-ng") is None or shutil.which("flite") is None,
    reason="needs the espeak-ng and flite binaries (Debian packages espeak-ng and flite)",
)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("needs the espeak-ng and flite binaries (Debian packages espeak-ng and flite)")
    return SpeechCorpus.build(SpeechCorpusConfig.tiny(), tmp_path_factory.mktemp("speech-cache"), progress=False)


class CountingSynth:
    """A stand-in for `synthesize` that counts calls and raises once `fail_after` calls succeeded."""

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.fail_after = fail_after
        self.lock = threading.Lock()

    def __call__(self, speaker, text):
        with self.lock:
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise KeyboardInterrupt("simulated interruption")
            self.calls += 1
        return synthesize(speaker, text)


# ---- sentences --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sentence", "expected"),
    [
        ("Python uses the usual flow control statements.", True),
        ("Of course, this doesn't fit well with fixed-length messages.", True),
        ("Is this a question about four words?", True),
        ("Too short here.", False),
        ("Use the :func:`len` function to count items.", False),
        ("The value 42 is the answer to everything.", False),
        ("The API returns a list of numbers.", False),
        ("Call the OrderedDict class to keep order.", False),
        ("The x variable is set to the result.", False),
        ("Run pdb to step through the program.", False),
        ("Use os.path to build the path.", False),
        ("this sentence starts in lower case.", False),
        ("This sentence has no end punctuation", False),
        ("This one ends in a colon, as literal blocks do:", False),
        (" ".join(["Word"] + ["word"] * 20) + ".", False),
    ],
)
def test_plain_sentence_filter(sentence, expected):
    assert is_plain_sentence(sentence) is expected


def test_transcript_normalization():
    assert normalize_transcript("Built-in types, mostly; don't panic!") == "built in types mostly don't panic"
    assert normalize_transcript("Python's  sets.") == "python's sets"


def test_doc_extraction_skips_markup(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.rst.txt").write_text(
        "Title Here\n==========\n\n"
        "The first paragraph has two sentences of prose. It continues on\n"
        "the next line as plain text.\n\n"
        ".. note::\n   This directive body must never be used here.\n\n"
        "For example::\n\n   >>> print('code lines are skipped too')\n\n"
        "* A bullet item is skipped as a whole.\n\n"
        "The first paragraph has two sentences of prose.\n",
        encoding="utf-8",
    )

    sentences = python_doc_sentences(tmp_path)

    assert sentences == [
        "The first paragraph has two sentences of prose.",
        "It continues on the next line as plain text.",
    ]
    assert python_doc_sentences(tmp_path / "missing") == []


def test_generated_sentences_are_deterministic_and_distinct():
    first = generated_sentences(200, seed=3)

    assert first == generated_sentences(200, seed=3)
    assert first != generated_sentences(200, seed=4)
    assert len(set(first)) == 200
    assert all(is_plain_sentence(sentence) for sentence in first)
    with pytest.raises(ValueError, match="fewer than the 10 requested"):
        generated_sentences(10, min_words=12, max_words=20)


# ---- speakers and synthesis -------------------------------------------------------------------


def test_speaker_table_is_consistent():
    ids = [speaker.id for speaker in SPEAKERS]

    assert len(set(ids)) == len(ids)
    assert set(HELDOUT_SPEAKERS) <= set(ids)
    assert {get_speaker(speaker_id).engine for speaker_id in HELDOUT_SPEAKERS} == {"espeak-ng", "flite"}
    assert all(speaker.gender in ("male", "female") for speaker in SPEAKERS)


@needs_engines
@pytest.mark.parametrize("speaker_id", ["espeak-m1-p30-s150", "flite-slt", "flite-kal16"])
def test_synthesize_returns_16khz_speech(speaker_id):
    audio = synthesize(get_speaker(speaker_id), "The quick brown fox jumps over the lazy dog.")

    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert 1.0 < len(audio) / SAMPLE_RATE < 6.0
    assert np.all(np.isfinite(audio))
    assert np.abs(audio).max() <= 1.0
    assert np.sqrt(np.mean(audio**2)) > 0.01


def test_trim_silence_keeps_margin():
    tone = 0.5 * np.sin(np.arange(SAMPLE_RATE) * 0.1).astype(np.float32)
    padded = np.concatenate([np.zeros(SAMPLE_RATE), tone, np.zeros(2 * SAMPLE_RATE)]).astype(np.float32)

    trimmed = trim_silence(padded)

    margin = int(speech_synth.TRIM_MARGIN_S * SAMPLE_RATE)
    assert len(trimmed) == len(tone) + 2 * margin
    assert np.array_equal(trimmed[margin:-margin], tone)
    assert len(trim_silence(np.zeros(4000, dtype=np.float32))) == 4000


# ---- corpus build and cache -------------------------------------------------------------------


def test_tiny_build_is_deterministic(tiny_corpus, tmp_path):
    rebuilt = SpeechCorpus.build(SpeechCorpusConfig.tiny(), tmp_path, workers=1, progress=False)

    assert rebuilt.manifest == tiny_corpus.manifest
    for split in SPLITS:
        for first, second in zip(tiny_corpus.utterances(split), rebuilt.utterances(split), strict=True):
            assert first.path.relative_to(tiny_corpus.root) == second.path.relative_to(rebuilt.root)
            assert torch.equal(first.load(), second.load()), f"{first.path.name} of {first.speaker} differs"


def test_tiny_split_sizes(tiny_corpus):
    assert len(tiny_corpus.utterances("train")) == 6
    assert len(tiny_corpus.utterances("test_seen")) == 4
    assert len(tiny_corpus.utterances("test_unseen")) == 2
    assert tiny_corpus.speaker_ids("train") == ("espeak-m1", "espeak-f2")
    assert tiny_corpus.speaker_ids("test_unseen") == ("flite-slt",)


def check_disjoint_splits(utterances: dict[str, list], heldout_speakers: set[str]) -> None:
    speakers = {split: {item.speaker for item in items} for split, items in utterances.items()}
    sentences = {split: {item.sentence for item in items} for split, items in utterances.items()}

    assert speakers["train"].isdisjoint(heldout_speakers)
    assert speakers["test_seen"] == speakers["train"]
    assert speakers["test_unseen"] == heldout_speakers
    assert sentences["train"].isdisjoint(sentences["test_seen"])
    assert sentences["train"].isdisjoint(sentences["test_unseen"])
    assert sentences["test_seen"] == sentences["test_unseen"]
    for split, items in utterances.items():
        pairs = [(item.speaker, item.sentence) for item in items]
        assert len(set(pairs)) == len(pairs), f"{split} repeats a (speaker, sentence) pair"


def test_tiny_splits_are_disjoint(tiny_corpus):
    utterances = {split: tiny_corpus.utterances(split) for split in SPLITS}

    check_disjoint_splits(utterances, {"flite-slt"})
    assert sorted({item.sentence for item in utterances["test_seen"]}) == sorted(
        tiny_corpus.manifest["heldout_sentences"]
    )


@needs_engines
def test_default_plan_splits_are_disjoint():
    config = SpeechCorpusConfig(train_utterances_per_speaker=40, heldout_sentences=15)
    plan = plan_corpus(config)

    utterances = {split: [] for split in SPLITS}
    for record in plan["utterances"]:
        utterances[record["split"]].append(speech.Utterance(record["path"], record["speaker"], record["engine"], record["text"], 0.0, record["sentence"], 0))
    check_disjoint_splits(utterances, set(HELDOUT_SPEAKERS))
    assert len(utterances["train"]) == 40 * (len(SPEAKERS) - len(HELDOUT_SPEAKERS))
    assert len(utterances["test_unseen"]) == 15 * len(HELDOUT_SPEAKERS)
    assert len({record["path"] for record in plan["utterances"]}) == len(plan["utterances"])


@needs_engines
def test_generated_text_source_plan():
    config = SpeechCorpusConfig(train_utterances_per_speaker=5, heldout_sentences=3, text_source="generated")

    plan = plan_corpus(config)

    assert plan["text_source"] == "generated"
    assert SpeechCorpus.folder(config) != SpeechCorpus.folder(SpeechCorpusConfig(5, 3))
    assert all(is_plain_sentence(record["sentence"]) for record in plan["utterances"])


def test_tiny_audio_is_16khz_mono_speech(tiny_corpus):
    for split in SPLITS:
        for item in tiny_corpus.utterances(split):
            info = sf.info(item.path)
            audio = item.load()

            assert info.samplerate == SAMPLE_RATE
            assert info.channels == 1
            assert audio.dtype == torch.float32
            assert audio.shape == (item.num_samples,)
            assert torch.isfinite(audio).all()
            assert audio.pow(2).mean().sqrt() > 0.01
            assert item.duration_s == pytest.approx(item.num_samples / SAMPLE_RATE)
            assert item.text == normalize_transcript(item.sentence)
            assert item.text.islower()


def test_cached_corpus_loads_without_synthesis(tiny_corpus, monkeypatch):
    def fail(speaker, text):
        raise AssertionError(f"synthesized {text!r} with {speaker.id} although the corpus is cached")

    monkeypatch.setattr(speech, "synthesize", fail)
    cache_dir = tiny_corpus.root.parent

    rebuilt = SpeechCorpus.build(SpeechCorpusConfig.tiny(), cache_dir, progress=False)
    loaded = SpeechCorpus.load(SpeechCorpusConfig.tiny(), cache_dir)

    assert rebuilt.manifest == tiny_corpus.manifest
    assert loaded.manifest == tiny_corpus.manifest


def test_interrupted_build_resumes(tiny_corpus, tmp_path, monkeypatch):
    config = SpeechCorpusConfig.tiny()
    interrupted = CountingSynth(fail_after=5)
    monkeypatch.setattr(speech, "synthesize", interrupted)

    with pytest.raises(KeyboardInterrupt):
        SpeechCorpus.build(config, tmp_path, workers=1, progress=False)

    root = SpeechCorpus.folder(config, tmp_path)
    assert not (root / "manifest.json").exists()
    assert (root / "plan.json").is_file()
    assert len(list(root.rglob("*.flac"))) == 5
    assert list(root.rglob("*.tmp")) == []
    with pytest.raises(FileNotFoundError, match="Call SpeechCorpus.build"):
        SpeechCorpus.load(config, tmp_path)

    # A file that a killed process left half written is removed by the next build.
    stale = next(root.rglob("*.flac")).with_name("00000.flac.abc.tmp")
    stale.write_bytes(b"half a file")
    resumed = CountingSynth()
    monkeypatch.setattr(speech, "synthesize", resumed)

    corpus = SpeechCorpus.build(config, tmp_path, workers=2, progress=False)

    assert resumed.calls == 12 - 5
    assert not stale.exists()
    assert corpus.manifest == tiny_corpus.manifest
    for first, second in zip(corpus.utterances("train"), tiny_corpus.utterances("train"), strict=True):
        assert torch.equal(first.load(), second.load())
    assert json.loads((root / "manifest.json").read_text())["utterances"][0]["num_samples"] > 0


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VQKIT_CACHE_DIR", str(tmp_path / "vq"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "vq"

    monkeypatch.delenv("VQKIT_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "vqkit"
    assert SpeechCorpus.folder(SpeechCorpusConfig.tiny()).parent == tmp_path / "xdg" / "vqkit"

    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir().parts[-2:] == (".cache", "vqkit")


def test_cache_key_changes_with_config():
    tiny = SpeechCorpusConfig.tiny()

    assert tiny.cache_key() == SpeechCorpusConfig.tiny().cache_key()
    assert tiny.cache_key() != SpeechCorpusConfig(3, 2, tiny.speakers, tiny.heldout_speakers, seed=1).cache_key()
    assert SpeechCorpusConfig().cache_key() != tiny.cache_key()


# ---- crops ------------------------------------------------------------------------------------


def test_crops_shapes_and_determinism(tiny_corpus):
    crops = SpeechCrops(tiny_corpus, "train", crop_seconds=1.0, seed=0)

    waveform, speaker = crops[3]
    assert waveform.shape == (SAMPLE_RATE,)
    assert waveform.dtype == torch.float32
    assert speaker in (0, 1)
    position, start = crops.crop_origin(3)
    assert tiny_corpus.speaker_ids("train")[speaker] == crops.utterances[position].speaker
    assert torch.equal(waveform, crops.utterances[position].load()[start : start + SAMPLE_RATE])
    assert torch.equal(SpeechCrops(tiny_corpus, seed=0)[3][0], waveform)
    assert any(not torch.equal(SpeechCrops(tiny_corpus, seed=1)[i][0], crops[i][0]) for i in range(4))

    batch = next(iter(torch.utils.data.DataLoader(crops, batch_size=4)))
    assert batch[0].shape == (4, SAMPLE_RATE)
    assert batch[1].shape == (4,)


def test_crops_pad_short_utterances(tiny_corpus):
    crops = SpeechCrops(tiny_corpus, "test_unseen", crop_seconds=20.0)

    waveform, speaker = crops[0]
    position, start = crops.crop_origin(0)
    length = crops.utterances[position].num_samples
    assert waveform.shape == (20 * SAMPLE_RATE,)
    assert start == 0
    assert speaker == 0
    assert waveform[length:].abs().max() == 0
    assert waveform[:length].abs().max() > 0


# ---- errors -----------------------------------------------------------------------------------


def test_unknown_split_and_speaker_raise(tiny_corpus):
    with pytest.raises(ValueError, match="unknown split 'validation'"):
        tiny_corpus.utterances("validation")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        SpeechCrops(tiny_corpus, "dev")
    with pytest.raises(ValueError, match="unknown speaker 'flite-slt' for split 'train'"):
        tiny_corpus.utterances("train", speaker="flite-slt")
    assert {item.speaker for item in tiny_corpus.utterances("train", speaker="espeak-f2")} == {"espeak-f2"}
    with pytest.raises(ValueError, match="unknown speaker 'espeak-m99'"):
        SpeechCorpusConfig(speakers=("espeak-m1", "espeak-m99"), heldout_speakers=())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heldout_speakers": ("flite-awb",), "speakers": ("espeak-m1",)}, "missing from speakers"),
        ({"heldout_speakers": ("espeak-m1",), "speakers": ("espeak-m1",)}, "every speaker is held out"),
        ({"speakers": ("espeak-m1", "espeak-m1"), "heldout_speakers": ()}, "duplicates"),
        ({"train_utterances_per_speaker": 0}, "at least 1"),
        ({"min_words": 10, "max_words": 5}, "min_words"),
        ({"text_source": "wikipedia"}, "unknown text_source 'wikipedia'"),
    ],
)
def test_invalid_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpeechCorpusConfig(**kwargs)


def test_missing_engine_binary_raises(monkeypatch, tmp_path):
    monkeypatch.setitem(speech_synth.ENGINE_BINARIES, "espeak-ng", "espeak-ng-not-installed")

    with pytest.raises(FileNotFoundError, match="'espeak-ng-not-installed' was not found on PATH"):
        SpeechCorpus.build(SpeechCorpusConfig.tiny(), tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="apt-get install espeak-ng"):
        synthesize(get_speaker("espeak-m1"), "A short test sentence.")


@needs_engines
def test_missing_flite_voices_raise_or_drop(monkeypatch):
    monkeypatch.setattr(speech_synth, "flite_voices", lambda: ("slt",))
    config = SpeechCorpusConfig(train_utterances_per_speaker=2, heldout_sentences=1)
    plan = plan_corpus(config)
    assert {speaker["id"] for speaker in plan["speakers"] if speaker["engine"] == "flite"} == {"flite-slt"}
    assert "flite-rms" not in plan["heldout_speakers"]

    monkeypatch.setattr(speech_synth, "flite_voices", lambda: ("kal",))
    with pytest.raises(FileNotFoundError, match="none of the flite voices"):
        plan_corpus(config)
