"""Gradio-free parts of the demo's "Speech codec" tab (`vqkit.demos.speech_codec`).

They read uploaded sound files and gradio's numpy audio into waveforms, check the recording's
length, build the prompt voice choices, and render a codec's output as a Markdown summary and
a code plot.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vqkit.data.speech_synth import HELDOUT_SPEAKERS, SPEAKERS_BY_ID
from vqkit.tokenizers.speech import SpeechCodec
from vqkit.tokenizers.speech_audio import MIN_SECONDS, check_sample_rate

SAME_AS_INPUT = "same as input"
# Bounds the CPU time and memory of one request. Encoding runs in 30 s blocks, but the input,
# the codes and the decoded audio of the whole recording stay in memory.
MAX_SECONDS = 600.0
SHOWN_CODES = 100

GradioAudio = tuple[int, np.ndarray]
"""Gradio's numpy audio: (sample rate in Hz, samples (n,) or (n, channels))."""
VoicePrompts = dict[str, tuple[Tensor, int]]
"""{speaker id: (float32 (samples,) waveform, sample rate in Hz)}, as `vqkit.demos.speech_prompts.load_voice_prompts` returns it."""


# ---- input ------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
    """Format a length in seconds: "4.250 s", "10 min (600 s)" or "12 min 30.5 s (750.5 s)"."""
    if seconds < 60:
        return f"{seconds:.3f} s"
    minutes, rest = divmod(seconds, 60)
    if rest == 0:
        return f"{int(minutes)} min ({seconds:g} s)"
    return f"{int(minutes)} min {rest:.1f} s ({seconds:.1f} s)"


def check_duration(num_samples: int, sample_rate: int, max_seconds: float = MAX_SECONDS) -> float:
    """Return the length in seconds of `num_samples` at `sample_rate` Hz.

    Raises ValueError when it is under `MIN_SECONDS` or over `max_seconds`.
    """
    seconds = num_samples / sample_rate
    if seconds > max_seconds:
        raise ValueError(
            f"The recording is {format_duration(seconds)} long, over the limit of {format_duration(max_seconds)}. "
            "Trim it and try again."
        )
    if seconds < MIN_SECONDS:
        raise ValueError(
            f"The recording is {seconds:.3f} s long ({num_samples} samples at {sample_rate} Hz). "
            f"The codec needs at least {MIN_SECONDS} s of audio."
        )
    return seconds


def audio_to_waveform(audio: GradioAudio | None) -> tuple[Tensor, int]:
    """Convert gradio numpy audio to a float32 (samples,) mono waveform in [-1, 1] and its sample rate in Hz.

    Integer samples are scaled by their type's range, so int16 is divided by 32768, and
    unsigned ones are centred first. Channels, the second axis, are averaged. The sample rate
    is kept, because the codec resamples. Raises ValueError for missing audio, other shapes or
    sample types, a length outside [`MIN_SECONDS`, `MAX_SECONDS`] and NaN or infinite samples.
    """
    if audio is None:
        raise ValueError("No audio: upload or record a clip, or pick an example.")
    sample_rate, samples = audio
    sample_rate = check_sample_rate(sample_rate)
    samples = np.asarray(samples)
    if samples.ndim not in (1, 2) or (samples.ndim == 2 and samples.shape[1] == 0):
        shape = samples.shape
        raise ValueError(f"audio must be (samples,) or (samples, channels), got {shape}")
    check_duration(samples.shape[0], sample_rate)

    if samples.dtype.kind == "i":
        scale = float(np.iinfo(samples.dtype).max) + 1.0
        waveform = samples.astype(np.float32) / scale
    elif samples.dtype.kind == "u":
        scale = (float(np.iinfo(samples.dtype).max) + 1.0) / 2.0
        waveform = (samples.astype(np.float32) - scale) / scale
    elif samples.dtype.kind == "f":
        waveform = samples.astype(np.float32)
    else:
        raise ValueError(f"audio samples must be int or float, got {samples.dtype}")
    if waveform.ndim == 2:
        waveform = waveform.mean(axis=1)
    if not np.isfinite(waveform).all():
        raise ValueError("The recording contains NaN or infinite samples. Replace them or use another recording.")
    return torch.from_numpy(np.ascontiguousarray(waveform)), sample_rate


def read_audio_file(path: str | os.PathLike[str] | None) -> tuple[Tensor, int]:
    """Read a sound file (WAV, FLAC, OGG, MP3, ...) into a float32 (samples,) mono waveform and its rate in Hz.

    soundfile decodes it, so no ffmpeg is needed. The length is checked from the file's header
    before any sample is read. Channels are averaged and the sample rate is kept, because the
    codec resamples. Raises ValueError for a missing or unreadable file, a length outside
    [`MIN_SECONDS`, `MAX_SECONDS`] and NaN or infinite samples.
    """
    import soundfile

    if path is None:
        raise ValueError("No audio: upload or record a clip, or pick an example.")
    name = Path(path).name
    try:
        info = soundfile.info(os.fspath(path))
        check_duration(int(info.frames), int(info.samplerate))
        samples, sample_rate = soundfile.read(os.fspath(path), dtype="float32", always_2d=True)  # (n, channels)
    except soundfile.LibsndfileError as error:
        raise ValueError(f"Could not read {name!r} as audio ({error}). Upload a WAV, FLAC, OGG or MP3 file.") from None
    waveform = samples.mean(axis=1)
    if not np.isfinite(waveform).all():
        raise ValueError("The recording contains NaN or infinite samples. Replace them or use another recording.")
    return torch.from_numpy(np.ascontiguousarray(waveform)), int(sample_rate)


def to_gradio_audio(waveform: Tensor, sample_rate: int) -> GradioAudio:
    """Convert a float (samples,) waveform in [-1, 1] to gradio's (sample rate, int16 samples).

    Gradio would rescale float audio to its peak, so the tab converts to int16 itself. The
    scale 32768 is the inverse of `audio_to_waveform`, so 16-bit audio passes unchanged.
    """
    scaled = waveform.detach().float().mul(32768.0).round().clamp(-32768.0, 32767.0)
    samples = scaled.to(torch.int16)
    return sample_rate, samples.cpu().numpy()


# ---- voice prompts ----------------------------------------------------------------------------


def voice_label(speaker_id: str) -> str:
    """Return a dropdown label such as "flite-rms (flite, male, held out)"."""
    speaker = SPEAKERS_BY_ID.get(speaker_id)
    if speaker is None:
        return speaker_id
    held_out = ", held out" if speaker_id in HELDOUT_SPEAKERS else ""
    return f"{speaker_id} ({speaker.engine}, {speaker.gender}{held_out})"


def prompt_choices(prompts: VoicePrompts) -> list[tuple[str, str]]:
    """Return the (label, value) choices of the prompt voice dropdown: `SAME_AS_INPUT`, then each voice."""
    return [(SAME_AS_INPUT, SAME_AS_INPUT), *((voice_label(speaker), speaker) for speaker in prompts)]


def resolve_prompt(choice: str | None, prompts: VoicePrompts) -> tuple[Tensor, int] | None:
    """Return the waveform and sample rate of the voice `choice`, or None for `SAME_AS_INPUT`."""
    if not choice or choice == SAME_AS_INPUT:
        return None
    if choice not in prompts:
        raise ValueError(f"unknown prompt voice {choice!r}: choose {SAME_AS_INPUT!r} or one of {', '.join(prompts)}.")
    return prompts[choice]


# ---- codec output -----------------------------------------------------------------------------


@dataclass
class CodecResult:
    """Codes and decoded audio of one input."""

    codes: Tensor
    """Long (frames,) codes, or (frames, levels) for residual codes."""
    audio: Tensor
    """Float (samples,) at 16 kHz, trimmed to the input's length."""
    input_seconds: float
    converted: bool
    """Whether another voice's prompt was used, so the output is a voice conversion."""


def code_statistics(codes: Tensor, codebook_size: int) -> list[tuple[int, float]]:
    """Return (distinct codes, entropy in bits per code) for each level of long (frames,) or (frames, levels) codes.

    The entropy is -sum p log2 p over the codes' relative frequencies in this sequence.
    """
    statistics = []
    for level in codes.reshape(codes.shape[0], -1).T:
        counts = torch.bincount(level, minlength=codebook_size).double()
        probabilities = counts[counts > 0] / counts.sum()
        entropy = float(-(probabilities * probabilities.log2()).sum())
        # abs() turns the -0.0 of a single code into 0.0.
        statistics.append((int((counts > 0).sum()), abs(entropy)))
    return statistics


def summarize(codec: SpeechCodec, model_name: str, result: CodecResult, voice: str | None = None) -> str:
    """Return the Markdown summary: bitrate, frames, duration, code statistics and the first `SHOWN_CODES` codes."""
    codes = result.codes.reshape(result.codes.shape[0], -1)
    frames, levels = codes.shape
    size = codec.codebook_size
    statistics = code_statistics(codes, size)
    bits = math.ceil(math.log2(size))
    if not codec.use_prompt:
        mode = "reconstruction (this model has no voice prompt)"
    elif result.converted:
        mode = f"voice conversion to `{voice}`"
    else:
        mode = "reconstruction, with the input as its own voice prompt"

    def per_level(values: list[str]) -> str:
        if levels == 1:
            return values[0]
        return ", ".join(f"level {i}: {value}" for i, value in enumerate(values, 1))

    used = per_level([f"{count} of {size}" for count, _ in statistics])
    entropies = per_level([f"{entropy:.2f}" for _, entropy in statistics])
    entropy_rate = sum(entropy for _, entropy in statistics) * codec.frame_rate
    codebooks = "1 codebook" if levels == 1 else f"{levels} codebooks"
    rate = codec.frame_rate
    lines = [
        f"**`{model_name}`**: {mode}.",
        "",
        "| | |",
        "|---|---|",
        f"| Bitrate | {codec.bitrate:g} bits/s ({rate} frames/s x {codebooks} x {bits} bits) |",
        f"| Frame rate | {rate} frames/s |",
        f"| Frames | {frames} |",
        f"| Duration | {format_duration(result.input_seconds)} |",
        f"| Distinct codes used | {used} |",
        f"| Token entropy | {entropies} bits per code (max log2 {size} = {math.log2(size):.2f}) |",
        f"| Entropy rate | {entropy_rate:.1f} bits/s (token entropy x frame rate, summed over levels) |",
        "",
        f"First {min(SHOWN_CODES, frames)} of {frames} code frames:",
        "",
        "```",
    ]
    for index, level in enumerate(codes[:SHOWN_CODES].T, start=1):
        prefix = "" if levels == 1 else f"level {index}: "
        lines.append(prefix + " ".join(str(code) for code in level.tolist()))
    lines.append("```")
    return "\n".join(lines)


def plot_codes(codes: Tensor, codebook_size: int, frame_rate: float) -> np.ndarray:
    """Plot code ids against time, one colour per level, as a uint8 RGB image (H, W, 3)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A Figure without pyplot keeps no global state, so parallel requests cannot mix plots.
    figure = Figure(figsize=(8, 2.6), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    levels = codes.reshape(codes.shape[0], -1).cpu().numpy()
    times = np.arange(levels.shape[0]) / frame_rate
    for index in range(levels.shape[1]):
        label = f"level {index + 1}"
        axes.plot(times, levels[:, index], ".", markersize=3, label=label)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("code id")
    axes.set_ylim(-0.5, codebook_size - 0.5)
    if levels.shape[1] > 1:
        axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
