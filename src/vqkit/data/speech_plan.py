"""Configuration of the synthesized speech corpus and the choice of its sentences and speakers.

`plan_corpus` turns a `SpeechCorpusConfig` into the list of utterances of every split, before any
audio exists. `vqkit.data.speech` stores that plan next to the audio, so that a resumed build
synthesizes exactly the utterances that the interrupted one planned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from vqkit.data.common import item_rng
from vqkit.data.speech_synth import (
    HELDOUT_SPEAKERS,
    SAMPLE_RATE,
    SPEAKERS,
    engine_version,
    get_speaker,
    usable_speakers,
)
from vqkit.data.speech_text import (
    MAX_WORDS,
    MIN_WORDS,
    PYTHON_DOC_SOURCES,
    generated_sentences,
    normalize_transcript,
    python_doc_sentences,
)

TEXT_SOURCES: tuple[str, ...] = ("auto", "python-docs", "generated")
# Bump when the layout or the synthesis changes, so that old caches are not reused.
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SpeechCorpusConfig:
    """Size and content of a synthesized speech corpus. Every field is part of the cache key.

    Args:
        train_utterances_per_speaker: sentences each training speaker reads in "train".
        heldout_sentences: sentences kept out of "train", read by every speaker in the test splits.
        speakers: ids from `SPEAKERS`, held-out ones included.
        heldout_speakers: the ids of `speakers` that only "test_unseen" contains.
        seed: seed of the sentence shuffle and of each speaker's draw of training sentences.
        min_words, max_words: sentence length range in words.
        text_source: "python-docs" (the Python 3.11 documentation sources), "generated" (a
            fixed vocabulary) or "auto" (the documentation when its folder exists).
    """

    train_utterances_per_speaker: int = 150
    heldout_sentences: int = 20
    speakers: tuple[str, ...] = tuple(speaker.id for speaker in SPEAKERS)
    heldout_speakers: tuple[str, ...] = HELDOUT_SPEAKERS
    seed: int = 0
    min_words: int = MIN_WORDS
    max_words: int = MAX_WORDS
    text_source: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "speakers", tuple(self.speakers))
        object.__setattr__(self, "heldout_speakers", tuple(self.heldout_speakers))
        if self.train_utterances_per_speaker < 1 or self.heldout_sentences < 1:
            raise ValueError(
                "train_utterances_per_speaker and heldout_sentences must be at least 1, got "
                f"{self.train_utterances_per_speaker} and {self.heldout_sentences}"
            )
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"need 1 <= min_words <= max_words, got {self.min_words} and {self.max_words}")
        if self.text_source not in TEXT_SOURCES:
            raise ValueError(f"unknown text_source {self.text_source!r}. Choose one of {', '.join(TEXT_SOURCES)}.")
        for speaker_id in self.speakers:
            get_speaker(speaker_id)
        if len(set(self.speakers)) != len(self.speakers):
            raise ValueError(f"speakers contains duplicates: {list(self.speakers)}. List each speaker once.")
        stray = [speaker_id for speaker_id in self.heldout_speakers if speaker_id not in self.speakers]
        if stray:
            raise ValueError(f"heldout_speakers {stray} are missing from speakers. Add them to speakers or drop them.")
        if not self.train_speakers:
            raise ValueError("every speaker is held out, so none is left for training. Remove one from heldout_speakers.")

    @property
    def train_speakers(self) -> tuple[str, ...]:
        return tuple(speaker_id for speaker_id in self.speakers if speaker_id not in self.heldout_speakers)

    @classmethod
    def tiny(cls) -> SpeechCorpusConfig:
        """Return the test configuration: 2 training speakers and 1 held-out speaker, 12 utterances in all."""
        return cls(
            train_utterances_per_speaker=3,
            heldout_sentences=2,
            speakers=("espeak-m1", "espeak-f2", "flite-slt"),
            heldout_speakers=("flite-slt",),
        )

    def resolved_text_source(self) -> str:
        if self.text_source == "auto":
            return "python-docs" if PYTHON_DOC_SOURCES.is_dir() else "generated"
        return self.text_source

    def cache_key(self) -> str:
        """Return the first 12 hex digits of a SHA-256 of the fields, the speakers' engine settings and the text source."""
        fields = dataclasses.asdict(self)
        fields["text_source"] = self.resolved_text_source()
        fields["speaker_settings"] = [dataclasses.astuple(get_speaker(speaker_id)) for speaker_id in self.speakers]
        fields["format_version"] = FORMAT_VERSION
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def plan_corpus(config: SpeechCorpusConfig) -> dict:
    """Choose the sentences and the (speaker, sentence) pairs of every split, as a JSON-ready dict."""
    source = config.resolved_text_source()
    speakers = usable_speakers([get_speaker(speaker_id) for speaker_id in config.speakers])
    usable_ids = {speaker.id for speaker in speakers}
    train_speakers = [speaker_id for speaker_id in config.train_speakers if speaker_id in usable_ids]
    heldout_speakers = [speaker_id for speaker_id in config.heldout_speakers if speaker_id in usable_ids]
    if not train_speakers:
        raise FileNotFoundError(
            f"no training speaker of {list(config.train_speakers)} has an installed voice. Install the missing "
            "flite voices or choose other speakers."
        )
    needed = config.heldout_sentences + config.train_utterances_per_speaker
    if source == "python-docs":
        if not PYTHON_DOC_SOURCES.is_dir():
            raise FileNotFoundError(
                f"text_source 'python-docs' needs {PYTHON_DOC_SOURCES}, which is missing. Install the Debian package "
                "python3.11-doc or use text_source='generated'."
            )
        pool = python_doc_sentences(PYTHON_DOC_SOURCES, config.min_words, config.max_words)
    else:
        count = config.heldout_sentences + len(train_speakers) * config.train_utterances_per_speaker
        pool = generated_sentences(count, config.seed, config.min_words, config.max_words)
    if len(pool) < needed:
        raise ValueError(
            f"the {source} text source has {len(pool)} sentences, fewer than the {needed} that heldout_sentences "
            "plus train_utterances_per_speaker need. Lower them."
        )

    order = np.random.default_rng(config.seed).permutation(len(pool))
    sentences = [pool[i] for i in order.tolist()]
    heldout = range(config.heldout_sentences)
    train_pool = np.arange(config.heldout_sentences, len(sentences))

    utterances = []

    def add(split: str, speaker_id: str, sentence_index: int) -> None:
        speaker = get_speaker(speaker_id)
        sentence = sentences[sentence_index]
        utterances.append(
            {
                "split": split,
                "speaker": speaker_id,
                "engine": speaker.engine,
                "sentence": sentence,
                "text": normalize_transcript(sentence),
                "path": f"audio/{speaker_id}/{sentence_index:05d}.flac",
            }
        )

    for speaker_id in train_speakers:
        # Keyed by the position in config.speakers, so that a dropped speaker changes no other draw.
        rng = item_rng(config.seed, config.speakers.index(speaker_id))
        draw = rng.choice(train_pool, config.train_utterances_per_speaker, replace=False)
        for sentence_index in sorted(draw.tolist()):
            add("train", speaker_id, sentence_index)
    for split, speaker_ids in (("test_seen", train_speakers), ("test_unseen", heldout_speakers)):
        for speaker_id in speaker_ids:
            for sentence_index in heldout:
                add(split, speaker_id, sentence_index)

    return {
        "format_version": FORMAT_VERSION,
        "config": dataclasses.asdict(config),
        "text_source": source,
        "engine_versions": {engine: engine_version(engine) for engine in sorted({sp.engine for sp in speakers})},
        "sample_rate": SAMPLE_RATE,
        "speakers": [dataclasses.asdict(speaker) for speaker in speakers],
        "train_speakers": train_speakers,
        "heldout_speakers": heldout_speakers,
        "heldout_sentences": sentences[: config.heldout_sentences],
        "utterances": utterances,
    }
