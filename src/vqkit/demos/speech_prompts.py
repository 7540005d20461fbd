"""Voice prompts that ship with vqkit: one short utterance per speaker, for the "Speech codec" demo tab.

The prompts live in `checkpoints/speech-prompts/` as `<speaker id>.flac` (16 kHz mono, 16-bit),
with a README.md that lists each file's speaker, engine and transcript. The demo reads them, so
it needs neither the synthesized corpus nor the TTS engines. Make them from the corpus with

    python -m vqkit.demos.speech_prompts --out checkpoints/speech-prompts
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import Tensor

from vqkit import registry
from vqkit.data.speech import SAMPLE_RATE, SpeechCorpus, SpeechCorpusConfig, Utterance
from vqkit.data.speech_synth import get_speaker

logger = logging.getLogger(__name__)

PROMPTS_FOLDER = "speech-prompts"
"""Folder of the voice prompts under `vqkit.registry.checkpoints_root()`."""
# mkstemp creates files readable by their owner only, but shipped files must be readable by all.
FILE_MODE = 0o644
EXPORT_COMMAND = "python -m vqkit.demos.speech_prompts --out checkpoints/speech-prompts"

# Four training speakers (a flite male and female, a low-pitched espeak-ng male and a
# high-pitched espeak-ng female), then the four speakers held out from training.
DEFAULT_SPEAKERS: tuple[str, ...] = (
    "flite-awb",
    "flite-slt",
    "espeak-m1-p30-s150",
    "espeak-f1-p70-s160",
    "espeak-m7",
    "espeak-f3",
    "espeak-f4-p35-s190",
    "flite-rms",
)


@dataclass(frozen=True)
class VoicePrompt:
    """One exported prompt: the file name and where its audio came from."""

    file_name: str
    speaker: str
    engine: str
    gender: str
    held_out: bool
    """Whether the speaker is held out from training (read from the "test_unseen" split)."""
    seconds: float
    transcript: str


def pick_utterance(utterances: Sequence[Utterance], seconds: float) -> Utterance:
    """Return the utterance whose length is closest to `seconds`, the first one on a tie."""
    if not utterances:
        raise ValueError("no utterances to pick a voice prompt from")
    return min(utterances, key=lambda utterance: abs(utterance.duration_s - seconds))


def export_voice_prompts(
    out_dir: str | os.PathLike[str],
    corpus: SpeechCorpus,
    speakers: Sequence[str],
    seconds: float = 4.0,
    command: str | None = None,
) -> list[VoicePrompt]:
    """Write one whole held-out-sentence utterance per speaker to `out_dir/<speaker>.flac`, and a README.md.

    Each speaker's utterance is the one of its test split ("test_unseen" for held-out speakers,
    else "test_seen") whose length is closest to `seconds`. The audio is copied whole, so it
    keeps the synthesizer's silence trimming and gets no padding. Files are 16 kHz mono 16-bit
    FLAC, each written to a temporary file and renamed. `command` is the command line that the
    README records, by default the Python call. Other files in `out_dir` are kept.
    Raises ValueError for an empty or repeated speaker list, a speaker missing from the corpus
    or a non-positive `seconds`.
    """
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if isinstance(speakers, str) or not speakers or len(set(speakers)) != len(speakers):
        raise ValueError(f"speakers must be a non-empty list without repeats, got {speakers!r}")
    known = (*corpus.train_speakers, *corpus.heldout_speakers)
    missing = [speaker for speaker in speakers if speaker not in known]
    if missing:
        raise ValueError(f"speakers {missing} are not in the corpus {corpus.root}. Choose from: {', '.join(known)}.")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = []
    for speaker_id in speakers:
        held_out = speaker_id in corpus.heldout_speakers
        split = "test_unseen" if held_out else "test_seen"
        utterance = pick_utterance(corpus.utterances(split, speaker=speaker_id), seconds)
        file_name = f"{speaker_id}.flac"
        _write_flac_atomic(out_dir / file_name, utterance.load().numpy())
        speaker = get_speaker(speaker_id)
        prompts.append(
            VoicePrompt(
                file_name=file_name,
                speaker=speaker_id,
                engine=speaker.engine,
                gender=speaker.gender,
                held_out=held_out,
                seconds=utterance.duration_s,
                transcript=utterance.sentence,
            )
        )
        logger.info("Wrote %s: %.2f s of %s from %s", file_name, utterance.duration_s, speaker_id, utterance.path)

    if command is None:
        command = f"export_voice_prompts({str(out_dir)!r}, corpus, {list(speakers)!r}, seconds={seconds})"
    _write_text_atomic(out_dir / "README.md", describe_prompts(prompts, corpus, command))
    size = sum((out_dir / prompt.file_name).stat().st_size for prompt in prompts)
    logger.info("Exported %d voice prompts to %s, %.0f kB of FLAC", len(prompts), out_dir, size / 1000)
    return prompts


def describe_prompts(prompts: Sequence[VoicePrompt], corpus: SpeechCorpus, command: str) -> str:
    """Return the README.md of a prompts folder: the table of files and the command that made them."""
    engines = corpus.manifest.get("engine_versions", {})
    lines = [
        "# Voice prompts",
        "",
        'Short utterances of synthetic speakers, one per file, for the demo\'s "Speech codec" tab: as',
        "example inputs and as the target voice of voice conversion. Each file is one whole utterance",
        "of a held-out sentence from the vqkit speech corpus (`vqkit.data.speech`), 16 kHz mono",
        '16-bit FLAC. "Held out" speakers are absent from the codec\'s training data.',
        "",
        "| File | Speaker | Engine | Gender | Held out | Seconds | Transcript |",
        "|---|---|---|---|---|---|---|",
    ]
    for prompt in prompts:
        held_out = "yes" if prompt.held_out else "no"
        lines.append(
            f"| `{prompt.file_name}` | {prompt.speaker} | {prompt.engine} | {prompt.gender} | {held_out} "
            f"| {prompt.seconds:.2f} | {prompt.transcript} |"
        )
    lines += ["", "Engine versions:", ""]
    lines += [f"- {engine}: {version}" for engine, version in sorted(engines.items())]
    lines += [
        "",
        f"Corpus: `{corpus.root.name}` (text source: {corpus.manifest.get('text_source', 'unknown')}).",
        "",
        "Made from the repository root with:",
        "",
        "```sh",
        command,
        "```",
        "",
    ]
    return "\n".join(lines)


def default_prompts_folder() -> Path:
    """Return the shipped prompts folder, `checkpoints/speech-prompts` under `vqkit.registry.checkpoints_root()`."""
    return registry.checkpoints_root() / PROMPTS_FOLDER


def load_voice_prompts(folder: str | os.PathLike[str] | None = None) -> dict[str, tuple[Tensor, int]]:
    """Read every `<speaker id>.flac` in `folder` (default: the shipped folder), sorted by speaker id.

    Returns {speaker id: (float32 (samples,) waveform in [-1, 1], sample rate in Hz)}. The
    shipped files are 16 kHz. Multi-channel files are averaged to mono. Raises
    FileNotFoundError when the folder is missing or contains no FLAC file.
    """
    folder = default_prompts_folder() if folder is None else Path(folder)
    paths = sorted(folder.glob("*.flac")) if folder.is_dir() else []
    if not paths:
        raise FileNotFoundError(
            f"no voice prompts (*.flac) found in {folder}. Export them from the repository root with `{EXPORT_COMMAND}`."
        )
    prompts = {}
    for path in paths:
        audio, sample_rate = sf.read(path, dtype="float32", always_2d=True)  # (samples, channels)
        prompts[path.stem] = (torch.from_numpy(audio.mean(axis=1)), int(sample_rate))
    return prompts


def _write_flac_atomic(path: Path, audio: np.ndarray) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(handle)
    try:
        sf.write(temporary, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_text_atomic(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def main(argv: Sequence[str] | None = None) -> None:
    """Export the voice prompts from the default speech corpus, building the corpus first if needed."""
    parser = argparse.ArgumentParser(prog="python -m vqkit.demos.speech_prompts", description=main.__doc__)
    parser.add_argument("--out", required=True, type=Path, help="folder that receives the FLAC files and README.md")
    parser.add_argument(
        "--speakers", nargs="+", default=list(DEFAULT_SPEAKERS), help="speaker ids (default: %(default)s)"
    )
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="target length of each prompt in seconds (default: %(default)s)"
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="corpus cache folder (default: $VQKIT_CACHE_DIR or ~/.cache/vqkit)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    arguments = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "-m", "vqkit.demos.speech_prompts", *arguments])
    corpus = SpeechCorpus.build(SpeechCorpusConfig(), cache_dir=args.cache_dir)
    export_voice_prompts(args.out, corpus, args.speakers, seconds=args.seconds, command=command)


if __name__ == "__main__":
    main()
