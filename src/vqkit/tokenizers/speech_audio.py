"""Audio input handling of the speech codec: checks, downmixing, resampling and reading long
files block by block.

`prepare_waveform` turns what a user passes (a tensor or array at any rate, mono or
multi-channel) into float32 (B, samples) at 16 kHz, or raises a ValueError that names the
problem and the fix. `AudioBlocks` reads a file in fixed blocks with a margin on each side, so a
long recording never sits in memory whole. `frame_power`, `active_level_db` and `level_gain`
measure the speech level of a recording and the gain that brings it to a target level.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as audio_functional
from torch import Tensor

from vqkit.tokenizers.speech_features import SAMPLE_RATE

logger = logging.getLogger(__name__)

MIN_SECONDS = 0.1
"""Shortest input the codec accepts; shorter clips contain too little speech for a code frame."""
LEVEL_FRAME = 320
"""Samples per frame of the level measurement: 20 ms at 16 kHz."""
LEVEL_GATE_DB = 40.0
"""Frames more than this many dB below the loudest frame are pauses and do not count to the level."""
MAX_GAIN_DB = 40.0
"""Largest gain or attenuation that `level_gain` applies, so near-silent input is not raised to full level."""


def check_sample_rate(sample_rate: object, name: str = "sample_rate") -> int:
    """Return `sample_rate` as an int, or raise ValueError when it is not a positive integer in Hz."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"{name} must be a positive integer in Hz, such as 16000, got {sample_rate!r}")
    return int(sample_rate)


def prepare_waveform(
    waveform: Tensor | np.ndarray, sample_rate: int, name: str = "waveform", rate_name: str = "sample_rate"
) -> Tensor:
    """Return float32 (B, samples) mono audio at 16 kHz on the input's device.

    Accepts (samples,), (B, samples) or (B, channels, samples); channels are averaged. Any
    positive sample rate is resampled with torchaudio. Raises ValueError for empty or too short
    audio, NaN or infinite samples, integer sample types and other shapes, and TypeError for a
    file path. `name` and `rate_name` are the argument names that error messages use.
    """
    if isinstance(waveform, (str, os.PathLike)):
        raise TypeError(
            f"{name} is a path ({os.fspath(waveform)!r}); pass a waveform tensor, or encode a file with "
            "codec.encode_file(path)"
        )
    sample_rate = check_sample_rate(sample_rate, rate_name)
    if isinstance(waveform, np.ndarray):
        waveform = torch.from_numpy(np.ascontiguousarray(waveform))
    if not isinstance(waveform, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(waveform).__name__}")
    if not waveform.is_floating_point():
        raise ValueError(
            f"{name} has dtype {waveform.dtype}; pass float samples in [-1, 1] (for 16-bit PCM, divide by 32768)"
        )

    if waveform.ndim == 1:
        waveform = waveform[None]
    elif waveform.ndim == 3:
        if waveform.shape[1] > 1:
            logger.info("Averaging %d channels of %s to mono", waveform.shape[1], name)
        waveform = waveform.mean(dim=1)
    elif waveform.ndim != 2:
        raise ValueError(
            f"{name} must be shaped (samples,), (batch, samples) or (batch, channels, samples), "
            f"got {tuple(waveform.shape)}"
        )

    seconds = waveform.shape[-1] / sample_rate
    if waveform.shape[0] == 0 or seconds < MIN_SECONDS:
        raise ValueError(
            f"{name} is too short: {waveform.shape[-1]} samples ({seconds:.3f} s at {sample_rate} Hz) in a batch of "
            f"{waveform.shape[0]}; the codec needs at least {MIN_SECONDS} s of audio per item"
        )
    if not torch.isfinite(waveform).all():
        raise ValueError(f"{name} contains NaN or infinite samples; replace them (torch.nan_to_num) or drop the clip")

    waveform = waveform.float()
    if sample_rate != SAMPLE_RATE:
        waveform = audio_functional.resample(waveform, sample_rate, SAMPLE_RATE)
    return waveform


@dataclass(frozen=True)
class Block:
    """One block of a long recording at 16 kHz: `samples` (1, n) cover [start - left, stop + right)."""

    samples: Tensor
    start: int
    stop: int
    left: int
    """Samples of margin before `start` inside `samples`."""


class AudioBlocks:
    """Read a sound file in blocks of `block_seconds` with `margin_seconds` on each side, at 16 kHz mono.

    Block and margin lengths are whole seconds, so block edges fall on whole samples at both
    the file's rate and 16 kHz, and resampling each block with its margin matches resampling
    the file whole away from the margins. Iterating yields `Block`s in order.
    """

    def __init__(self, path: str | os.PathLike[str], block_seconds: int = 30, margin_seconds: int = 1):
        import soundfile

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"audio file not found: {self.path}")
        try:
            info = soundfile.info(str(self.path))
        except soundfile.LibsndfileError as error:
            raise ValueError(
                f"could not read {self.path} as audio ({error}); pass a sound file such as WAV, FLAC, OGG or MP3"
            ) from None
        self.sample_rate = int(info.samplerate)
        self.source_frames = int(info.frames)
        self.channels = int(info.channels)
        if self.source_frames / self.sample_rate < MIN_SECONDS:
            raise ValueError(
                f"{self.path} is {self.source_frames / self.sample_rate:.3f} s long; the codec needs at least {MIN_SECONDS} s"
            )
        if isinstance(block_seconds, bool) or not isinstance(block_seconds, int) or block_seconds < 1:
            raise ValueError(f"block_seconds must be a positive whole number of seconds, got {block_seconds!r}")
        self.block_seconds, self.margin_seconds = block_seconds, margin_seconds
        self.num_samples = math.ceil(self.source_frames * SAMPLE_RATE / self.sample_rate)
        """Length of the file at 16 kHz."""

    @property
    def seconds(self) -> float:
        return self.source_frames / self.sample_rate

    def __iter__(self) -> Iterator[Block]:
        import soundfile

        rate = self.sample_rate
        with soundfile.SoundFile(str(self.path)) as file:
            for first_second in range(0, math.ceil(self.seconds), self.block_seconds):
                read_from = max(0, first_second - self.margin_seconds) * rate
                read_to = min(self.source_frames, (first_second + self.block_seconds + self.margin_seconds) * rate)
                file.seek(read_from)
                audio = file.read(read_to - read_from, dtype="float32", always_2d=True)  # (n, channels)
                samples = prepare_waveform(torch.from_numpy(audio.T)[None], rate, name=str(self.path))  # (1, n16)

                start = first_second * SAMPLE_RATE
                stop = min(self.num_samples, (first_second + self.block_seconds) * SAMPLE_RATE)
                left = start - read_from * SAMPLE_RATE // rate
                yield Block(samples, start, stop, left)


def tensor_blocks(waveform: Tensor, block_seconds: int, margin_seconds: int = 1) -> Iterator[Block]:
    """Split float (B, samples) 16 kHz audio into `Block`s like `AudioBlocks` reads a file."""
    if block_seconds < 1:
        raise ValueError(f"block_seconds must be a positive whole number of seconds, got {block_seconds}")
    block, margin, total = (block_seconds * SAMPLE_RATE, margin_seconds * SAMPLE_RATE, waveform.shape[-1])
    for start in range(0, total, block):
        read_from = max(0, start - margin)
        stop = min(total, start + block)
        yield Block(waveform[..., read_from : min(total, stop + margin)], start, stop, start - read_from)


def frame_windows(length: int, window: int, context: int) -> Iterator[tuple[int, int, int, int]]:
    """Yield (start, stop, first, last): kept range [start, stop) and processed range [first, last)."""
    for start in range(0, length, window):
        stop = min(length, start + window)
        yield start, stop, max(0, start - context), min(length, stop + context)


# ---- level ------------------------------------------------------------------------------------


def frame_power(waveform: Tensor) -> Tensor:
    """Float (B, samples) 16 kHz audio -> mean square (B, samples // 320) of whole 20 ms frames."""
    frames = waveform.shape[-1] // LEVEL_FRAME
    return waveform[..., : frames * LEVEL_FRAME].reshape(*waveform.shape[:-1], frames, LEVEL_FRAME).pow(2).mean(-1)


def active_level_db(power: Tensor) -> Tensor:
    """Frame powers (B, frames) -> active speech level (B,) in dB relative to full scale.

    The level is the mean power of the frames within `LEVEL_GATE_DB` of the loudest frame, so
    pauses do not lower it. Scaling the audio by g adds exactly 20 log10 g dB. All-zero audio
    gives -inf.
    """
    if power.shape[-1] == 0:
        raise ValueError(
            f"the level needs at least one 20 ms frame ({LEVEL_FRAME} samples at 16 kHz), got frame powers "
            f"shaped {tuple(power.shape)}; pass longer audio"
        )
    gate = power.amax(dim=-1, keepdim=True) * 10.0 ** (-LEVEL_GATE_DB / 10.0)
    active = power >= gate
    mean_power = (power * active).sum(-1) / active.sum(-1).clamp(min=1)
    return 10.0 * mean_power.log10()


def level_gain(level_db: Tensor, target_db: float) -> Tensor:
    """Levels (B,) in dB -> linear gains (B, 1) that bring each to `target_db`, within +-`MAX_GAIN_DB`.

    Silent items (level -inf) get gain 1.
    """
    check_level_db(target_db, "target_db")
    gain_db = (target_db - level_db).clamp(-MAX_GAIN_DB, MAX_GAIN_DB)
    gain_db = torch.where(torch.isfinite(level_db), gain_db, torch.zeros_like(gain_db))
    return (10.0 ** (gain_db / 20.0))[:, None]


def speech_levels_db(waveforms: Iterable[Tensor]) -> list[float]:
    """Return the active speech level in dB re full scale of each float (samples,) 16 kHz waveform."""
    return [float(active_level_db(frame_power(waveform[None]))[0]) for waveform in waveforms]


def check_level_db(level_db: object, name: str = "input_level_db") -> float:
    """Return `level_db` as a float, or raise ValueError when it is not a finite level in (-100, 0] dB."""
    if isinstance(level_db, bool) or not isinstance(level_db, (int, float)) or not -100.0 < level_db <= 0.0:
        raise ValueError(
            f"{name} must be a speech level in dB relative to full scale, in (-100, 0], such as -20.9; got {level_db!r}"
        )
    return float(level_db)

