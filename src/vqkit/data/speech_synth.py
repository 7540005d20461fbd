"""Speakers of the synthesized speech corpus and the calls to the TTS engines that voice them.

Each speaker is one voice of a local TTS engine, either an espeak-ng English (US) voice variant
or a flite voice. Some espeak-ng speakers also change the pitch (`-p`, 0 to 99, default 50) or
the rate (`-s`, words per minute, default 175). `synthesize` runs the engine as a subprocess with an argument list (no
shell), reads the WAV file it writes, resamples it to `SAMPLE_RATE` and trims leading and trailing
silence.

Output rates, measured with espeak-ng 1.51 and flite 2.2 (Debian): espeak-ng writes 22050 Hz, the
flite voices slt, awb, rms and kal16 write 16 kHz and kal writes 8 kHz.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
ENGINE_BINARIES: dict[str, str] = {"espeak-ng": "espeak-ng", "flite": "flite"}
ENGINE_PACKAGES: dict[str, str] = {"espeak-ng": "espeak-ng", "flite": "flite"}
SYNTH_TIMEOUT_S = 60.0

# Silence trimming: 10 ms frames quieter than the loudest frame by more than this many dB are
# silence, and this much audio is kept before the first and after the last voiced frame.
TRIM_THRESHOLD_DB = 40.0
TRIM_MARGIN_S = 0.1


@dataclass(frozen=True)
class Speaker:
    """One synthetic voice: an engine, its voice name and optional espeak-ng pitch and rate."""

    id: str
    engine: str
    voice: str
    gender: str
    pitch: int | None = None
    rate: int | None = None

    def command(self, text: str, wav_path: str) -> list[str]:
        """Return the argument list that makes the engine speak `text` into `wav_path`."""
        if self.engine == "espeak-ng":
            args = [_binary_path(self.engine), "-v", self.voice, "-w", wav_path]
            if self.pitch is not None:
                args += ["-p", str(self.pitch)]
            if self.rate is not None:
                args += ["-s", str(self.rate)]
            return args + ["--", text]
        if self.engine == "flite":
            return [_binary_path(self.engine), "-voice", self.voice, "-t", text, "-o", wav_path]
        raise ValueError(f"speaker {self.id!r} has unknown engine {self.engine!r}. Expected one of {list(ENGINE_BINARIES)}.")


def _espeak(variant: str, gender: str, pitch: int | None = None, rate: int | None = None) -> Speaker:
    speaker_id = f"espeak-{variant}"
    if pitch is not None:
        speaker_id += f"-p{pitch}"
    if rate is not None:
        speaker_id += f"-s{rate}"
    return Speaker(speaker_id, "espeak-ng", f"en-us+{variant}", gender, pitch, rate)


def _flite(voice: str, gender: str) -> Speaker:
    return Speaker(f"flite-{voice}", "flite", voice, gender)


SPEAKERS: tuple[Speaker, ...] = (
    *(_espeak(f"m{n}", "male") for n in range(1, 8)),
    *(_espeak(f"f{n}", "female") for n in range(1, 6)),
    _espeak("m1", "male", pitch=30, rate=150),
    _espeak("m4", "male", pitch=65, rate=195),
    _espeak("f1", "female", pitch=70, rate=160),
    _espeak("f4", "female", pitch=35, rate=190),
    _espeak("m6", "male", pitch=40),
    _espeak("f5", "female", rate=140),
    _flite("slt", "female"),
    _flite("awb", "male"),
    _flite("rms", "male"),
    _flite("kal16", "male"),
)
SPEAKERS_BY_ID: dict[str, Speaker] = {speaker.id: speaker for speaker in SPEAKERS}

# Speakers that only the "test_unseen" split contains: two plain espeak-ng variants, one with
# changed pitch and rate, and one flite voice.
HELDOUT_SPEAKERS: tuple[str, ...] = ("espeak-m7", "espeak-f3", "espeak-f4-p35-s190", "flite-rms")


def get_speaker(speaker_id: str) -> Speaker:
    """Return the speaker with id `speaker_id` from `SPEAKERS`."""
    try:
        return SPEAKERS_BY_ID[speaker_id]
    except KeyError:
        raise ValueError(f"unknown speaker {speaker_id!r}. Known speakers: {', '.join(SPEAKERS_BY_ID)}.") from None


def _binary_path(engine: str) -> str:
    binary = ENGINE_BINARIES[engine]
    path = shutil.which(binary)
    if path is None:
        raise FileNotFoundError(
            f"TTS engine binary {binary!r} was not found on PATH. Install it (Debian: apt-get install "
            f"{ENGINE_PACKAGES[engine]}) or leave its speakers out of SpeechCorpusConfig.speakers."
        )
    return path


@functools.cache
def flite_voices() -> tuple[str, ...]:
    """Return the voice names that `flite -lv` lists. Cached per process."""
    result = subprocess.run(
        [_binary_path("flite"), "-lv"], capture_output=True, text=True, timeout=SYNTH_TIMEOUT_S, check=True
    )
    # flite 2.2 prints "Voices available: kal awb_time kal16 awb rms slt".
    _, _, names = result.stdout.partition(":")
    return tuple(names.split())


def engine_version(engine: str) -> str:
    """Return the version line that `<engine> --version` prints, for the corpus manifest."""
    result = subprocess.run(
        [_binary_path(engine), "--version"], check=False, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_S
    )
    # espeak-ng 1.51 prints "eSpeak NG text-to-speech: 1.51  Data at: <folder>", and flite 2.2
    # prints a copyright line, then "  version: flite-2.2-current Sep 2018 (http://cmuflite.org)".
    for line in (result.stdout + result.stderr).splitlines():
        if "version" in line.lower() or "text-to-speech" in line:
            return line.split("  Data at")[0].strip()
    return "unknown"


def usable_speakers(speakers: list[Speaker]) -> list[Speaker]:
    """Return `speakers` without the flite speakers whose voice `flite -lv` does not list.

    Raises FileNotFoundError when an engine binary is missing, or when `speakers` contains flite
    speakers and none of their voices is installed. Dropped speakers are logged as warnings.
    """
    for engine in sorted({speaker.engine for speaker in speakers}):
        _binary_path(engine)
    flite_speakers = [speaker for speaker in speakers if speaker.engine == "flite"]
    if not flite_speakers:
        return list(speakers)
    available = flite_voices()
    missing = [speaker.id for speaker in flite_speakers if speaker.voice not in available]
    if len(missing) == len(flite_speakers):
        raise FileNotFoundError(
            f"none of the flite voices of speakers {missing} is installed, because `flite -lv` lists only {list(available)}. "
            "Install a flite build with these voices or leave the flite speakers out of SpeechCorpusConfig.speakers."
        )
    if missing:
        logger.warning(
            "leaving out speakers %s because flite -lv does not list their voices, only %s", missing, list(available)
        )
    return [speaker for speaker in speakers if speaker.id not in missing]


def trim_silence(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Cut leading and trailing silence from a mono waveform, keeping `TRIM_MARGIN_S` around the speech.

    Returns the waveform unchanged when it is all silence.
    """
    frame = sample_rate // 100
    count = len(waveform) // frame
    if count == 0:
        return waveform
    frames = waveform[: count * frame].reshape(count, frame).astype(np.float64)
    rms = np.sqrt(np.mean(frames**2, axis=1))
    peak = rms.max()
    if peak <= 0.0:
        return waveform
    voiced = np.flatnonzero(rms >= peak * 10.0 ** (-TRIM_THRESHOLD_DB / 20.0))
    margin = int(TRIM_MARGIN_S * sample_rate)
    start = max(0, voiced[0] * frame - margin)
    stop = min(len(waveform), (voiced[-1] + 1) * frame + margin)
    return waveform[start:stop]


def synthesize(speaker: Speaker, text: str) -> np.ndarray:
    """Speak `text` with `speaker` and return a mono float32 waveform at `SAMPLE_RATE`, trimmed of silence.

    Raises ValueError when `text` is empty, FileNotFoundError when the engine binary is missing
    and RuntimeError when the engine fails, times out or writes no audio.
    """
    if not text.strip():
        raise ValueError("text is empty: give at least one word to synthesize")
    with tempfile.TemporaryDirectory(prefix="vqkit-tts-") as folder:
        wav_path = os.path.join(folder, "out.wav")
        command = speaker.command(text, wav_path)
        try:
            result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=SYNTH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RuntimeError(
                f"{speaker.engine} timed out after {SYNTH_TIMEOUT_S:.0f} s on speaker {speaker.id!r}, text {text!r}"
            ) from None
        if result.returncode != 0 or not os.path.exists(wav_path):
            raise RuntimeError(
                f"{speaker.engine} failed with exit status {result.returncode} on speaker {speaker.id!r}, "
                f"text {text!r}: {result.stderr.strip() or 'no output file was written'}"
            )
        audio, rate = sf.read(wav_path, dtype="float32", always_2d=True)

    audio = audio.mean(axis=1)
    if rate != SAMPLE_RATE:
        audio = AF.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    audio = trim_silence(audio)
    if audio.size == 0 or not np.any(audio):
        raise RuntimeError(f"{speaker.engine} wrote silent audio for speaker {speaker.id!r}, text {text!r}")
    # Resampling can overshoot full scale slightly. Clipping keeps the 16-bit files exact.
    return np.clip(audio, -1.0, 1.0).astype(np.float32)
