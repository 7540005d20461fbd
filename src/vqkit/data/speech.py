"""A synthesized multi-speaker English speech corpus, cached on disk, and random training crops of it.

Speakers are voices of the local TTS engines espeak-ng and flite (the table is `SPEAKERS` in
`vqkit.data.speech_synth`) and sentences are plain prose from the Python documentation
(`vqkit.data.speech_text`). Nothing is downloaded. The corpus has three splits:

- "train": training speakers, each reading its own random draw from the training sentences.
- "test_seen": training speakers reading the held-out sentences.
- "test_unseen": held-out speakers reading the held-out sentences.

Held-out sentences and held-out speakers never occur in "train". Every speaker of a test split
reads every held-out sentence, so the test splits are parallel across speakers.

`SpeechCorpus.build` synthesizes the corpus once into `<cache>/speech-<config hash>/` as 16 kHz
16-bit FLAC files plus a JSON manifest. Each file is written to a temporary name and renamed, so
an interrupted build leaves only whole files and the next build synthesizes only the missing
ones. The cache is `$VQKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/vqkit`, else `~/.cache/vqkit`.
The same config and the same engine versions give the same manifest and the same audio.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from vqkit.data.common import DEFAULT_LENGTH, check_index, item_rng
from vqkit.data.speech_plan import SpeechCorpusConfig, plan_corpus
from vqkit.data.speech_synth import (
    HELDOUT_SPEAKERS,
    SAMPLE_RATE,
    SPEAKERS,
    get_speaker,
    synthesize,
)

__all__ = [
    "HELDOUT_SPEAKERS",
    "SAMPLE_RATE",
    "SPEAKERS",
    "SPLITS",
    "SpeechCorpus",
    "SpeechCorpusConfig",
    "SpeechCrops",
    "Utterance",
    "default_cache_dir",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "test_seen", "test_unseen")
MANIFEST_NAME = "manifest.json"
PLAN_NAME = "plan.json"


def default_cache_dir() -> Path:
    """Return `$VQKIT_CACHE_DIR`, else `$XDG_CACHE_HOME/vqkit`, else `~/.cache/vqkit`."""
    if os.environ.get("VQKIT_CACHE_DIR"):
        return Path(os.environ["VQKIT_CACHE_DIR"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "vqkit"
    return Path.home() / ".cache" / "vqkit"


@dataclass(frozen=True)
class Utterance:
    """One synthesized sentence: the FLAC file, who spoke it and its lowercase transcript `text`."""

    path: Path
    speaker: str
    engine: str
    text: str
    duration_s: float
    sentence: str
    num_samples: int

    def load(self) -> Tensor:
        """Read the waveform as a float32 (samples,) tensor at 16 kHz."""
        audio, _ = sf.read(self.path, dtype="float32")
        return torch.from_numpy(audio)


def _atomic_write_text(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temporary, path)


def _write_flac(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        sf.write(temporary, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    # Several processes (for example DDP ranks) may build the same corpus. The first one to
    # take the lock synthesizes, and the others find the finished manifest afterwards.
    # NOTE: fcntl.flock exists on Linux and macOS only.
    with open(root / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _synthesize_to(root: Path, record: dict) -> None:
    audio = synthesize(get_speaker(record["speaker"]), record["sentence"])
    _write_flac(root / record["path"], audio)


class SpeechCorpus:
    """A built corpus: its folder, its manifest and the utterances of each split.

    Create one with `SpeechCorpus.build(config)` (synthesizing what is missing) or
    `SpeechCorpus.load(config)` (which raises if the corpus was never built).
    """

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.train_speakers: tuple[str, ...] = tuple(manifest["train_speakers"])
        self.heldout_speakers: tuple[str, ...] = tuple(manifest["heldout_speakers"])
        self._utterances: dict[str, list[Utterance]] = {split: [] for split in SPLITS}
        for record in manifest["utterances"]:
            self._utterances[record["split"]].append(
                Utterance(
                    path=root / record["path"],
                    speaker=record["speaker"],
                    engine=record["engine"],
                    text=record["text"],
                    duration_s=record["num_samples"] / SAMPLE_RATE,
                    sentence=record["sentence"],
                    num_samples=record["num_samples"],
                )
            )

    @staticmethod
    def folder(config: SpeechCorpusConfig, cache_dir: str | Path | None = None) -> Path:
        """Return the folder that contains the corpus of `config` under `cache_dir` (default: `default_cache_dir()`)."""
        cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
        return cache_dir / f"speech-{config.cache_key()}"

    @classmethod
    def load(cls, config: SpeechCorpusConfig, cache_dir: str | Path | None = None) -> SpeechCorpus:
        """Open the finished corpus of `config`. Raises FileNotFoundError when it has not been built."""
        root = cls.folder(config, cache_dir)
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"speech corpus {root} is not built because {MANIFEST_NAME} is missing. Call SpeechCorpus.build(config) first."
            )
        return cls(root, json.loads(manifest_path.read_text(encoding="utf-8")))

    @classmethod
    def build(
        cls,
        config: SpeechCorpusConfig,
        cache_dir: str | Path | None = None,
        workers: int = 2,
        progress: bool = True,
    ) -> SpeechCorpus:
        """Synthesize the utterances of `config` that are not cached yet, then open the corpus.

        A finished corpus is opened without running any engine. Otherwise the plan of sentences
        and speakers is read from the folder (or made and saved there first), the missing files
        are synthesized by `workers` threads, and the manifest is written last.
        """
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        root = cls.folder(config, cache_dir)
        if (root / MANIFEST_NAME).is_file():
            return cls.load(config, cache_dir)
        root.mkdir(parents=True, exist_ok=True)
        with _build_lock(root):
            if (root / MANIFEST_NAME).is_file():
                return cls.load(config, cache_dir)
            manifest = cls._synthesize_missing(root, config, workers, progress)
            _atomic_write_text(root / MANIFEST_NAME, json.dumps(manifest, indent=1))
        return cls.load(config, cache_dir)

    @staticmethod
    def _synthesize_missing(root: Path, config: SpeechCorpusConfig, workers: int, progress: bool) -> dict:
        plan_path = root / PLAN_NAME
        if plan_path.is_file():
            plan = json.loads(plan_path.read_text(encoding="utf-8"))
        else:
            plan = plan_corpus(config)
            _atomic_write_text(plan_path, json.dumps(plan, indent=1))
        # The build lock is held, so temporary files can only be leftovers of a killed build.
        for leftover in root.rglob("*.tmp"):
            leftover.unlink()

        records = plan["utterances"]
        missing = [record for record in records if not (root / record["path"]).is_file()]
        logger.info(
            "building speech corpus %s: %d of %d utterances to synthesize", root, len(missing), len(records)
        )
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=workers) as executor:
            futures = [executor.submit(_synthesize_to, root, record) for record in missing]
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc="speech corpus", disable=not progress):
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

        for record in records:
            record["num_samples"] = sf.info(root / record["path"]).frames
        total_s = sum(record["num_samples"] for record in records) / SAMPLE_RATE
        logger.info(
            "built speech corpus %s in %.1f s: %d utterances, %.2f h of audio",
            root, time.perf_counter() - started, len(records), total_s / 3600,
        )
        return plan

    def utterances(self, split: str, speaker: str | None = None) -> list[Utterance]:
        """Return the utterances of `split` ("train", "test_seen" or "test_unseen"), optionally of one speaker."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}. Choose one of {', '.join(SPLITS)}.")
        items = self._utterances[split]
        if speaker is None:
            return list(items)
        if speaker not in self.speaker_ids(split):
            raise ValueError(
                f"unknown speaker {speaker!r} for split {split!r}. Speakers of this split: "
                f"{', '.join(self.speaker_ids(split))}."
            )
        return [item for item in items if item.speaker == speaker]

    def speaker_ids(self, split: str) -> tuple[str, ...]:
        """Return the speakers of `split` in a fixed order. An item's speaker index is its position here."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}. Choose one of {', '.join(SPLITS)}.")
        return self.heldout_speakers if split == "test_unseen" else self.train_speakers

    def duration_s(self, split: str) -> float:
        """Return the total audio length of `split` in seconds."""
        return sum(item.duration_s for item in self.utterances(split))


class SpeechCrops(Dataset):
    """Random fixed-length crops of the utterances of one split, with the speaker index of each.

    Item `i` picks an utterance uniformly and a crop start uniformly inside it, both from
    `(seed, i)`. Utterances shorter than the crop are zero-padded at the end. Items are
    (float32 (crop_samples,) waveform, speaker index into `corpus.speaker_ids(split)`).
    """

    def __init__(
        self,
        corpus: SpeechCorpus,
        split: str = "train",
        crop_seconds: float = 1.0,
        seed: int = 0,
        length: int = DEFAULT_LENGTH,
    ):
        if crop_seconds <= 0:
            raise ValueError(f"crop_seconds must be positive, got {crop_seconds}")
        self.utterances = corpus.utterances(split)
        if not self.utterances:
            raise ValueError(f"split {split!r} of {corpus.root} has no utterances, so there is nothing to crop")
        speaker_ids = corpus.speaker_ids(split)
        self.speaker_indices = [speaker_ids.index(item.speaker) for item in self.utterances]
        self.crop_samples = max(1, round(crop_seconds * SAMPLE_RATE))
        self.seed = seed
        self.length = length

    def __len__(self) -> int:
        return self.length

    def crop_origin(self, index: int) -> tuple[int, int]:
        """Return (position in `self.utterances`, start sample) of item `index`."""
        index = check_index(index, self.length)
        rng = item_rng(self.seed, index)
        position = int(rng.integers(len(self.utterances)))
        start = int(rng.integers(max(0, self.utterances[position].num_samples - self.crop_samples) + 1))
        return position, start

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        position, start = self.crop_origin(index)
        audio, _ = sf.read(self.utterances[position].path, start=start, frames=self.crop_samples, dtype="float32")
        crop = torch.zeros(self.crop_samples)
        crop[: len(audio)] = torch.from_numpy(audio)
        return crop, self.speaker_indices[position]
