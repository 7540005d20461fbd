"""Audio features of the speech codec: log-mel spectrograms, MFCC frames and the speaker
perturbation of "LSCodec: Low-Bitrate and Speaker-Decoupled Discrete Speech Codec".

The perturbation changes speed by a factor r (resampling, which shifts pitch and formants and
changes the duration by 1/r), then changes tempo by 1/r with a phase vocoder (duration only).
The result has the original length but another voice, so a codec that must reconstruct the
unperturbed speech from it cannot rely on the input's speaker traits.
"""

from __future__ import annotations

import math

import torch
import torchaudio.functional as audio_functional
import torchaudio.transforms as audio_transforms
from torch import Tensor, nn

SAMPLE_RATE = 16_000


class LogMel(nn.Module):
    """Log-mel spectrogram: waveform float (B, samples) at 16 kHz -> float (B, n_mels, frames).

    With the defaults a frame is 10 ms (hop 160) with a 25 ms Hann window (400 samples). Values
    are natural logs of power, floored at 1e-5.
    """

    def __init__(self, n_mels: int = 80, hop_length: int = 160, n_fft: int = 400):
        super().__init__()
        self.hop_length = hop_length
        self.mel = audio_transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels, power=2.0
        )

    def forward(self, waveform: Tensor) -> Tensor:
        return self.mel(waveform).clamp_min(1e-5).log()


class MFCCFrames(nn.Module):
    """MFCC frames: waveform float (B, samples) at 16 kHz -> float (B, frames, n_mfcc), 10 ms hop."""

    def __init__(self, n_mfcc: int = 20, hop_length: int = 160):
        super().__init__()
        self.mfcc = audio_transforms.MFCC(
            sample_rate=SAMPLE_RATE, n_mfcc=n_mfcc, melkwargs={"n_fft": 400, "hop_length": hop_length, "n_mels": 40}
        )

    def forward(self, waveform: Tensor) -> Tensor:
        return self.mfcc(waveform).transpose(1, 2)


def perturb_speaker(waveform: Tensor, speed: float, n_fft: int = 512, hop_length: int = 128) -> Tensor:
    """Shift the voice of float (B, samples) 16 kHz speech by `speed` while keeping its length.

    `speed` > 1 raises pitch and formants (a smaller vocal tract), < 1 lowers them. Returns
    float (B, samples).

    NOTE: the phase vocoder smears phase, so the output has 30-60% of the input's energy at
    speeds 0.9 to 1.2 on flite speech, and raised speeds make pocketsphinx transcribe a
    female voice worse. It serves as training-time augmentation, not as an audio effect.
    """
    if not 0.5 <= speed <= 2.0:
        raise ValueError(f"speed={speed} is outside [0.5, 2.0]; use a factor near 1, such as 0.85 to 1.15")
    if waveform.ndim != 2:
        raise ValueError(f"expected waveforms shaped (batch, samples), got {tuple(waveform.shape)}")
    length = waveform.shape[-1]
    if round(SAMPLE_RATE * speed / 100) * 100 == SAMPLE_RATE:
        return waveform

    # Speed change: play the samples at SAMPLE_RATE * speed, which resampling to
    # SAMPLE_RATE / speed and reading at SAMPLE_RATE emulates. The rate is rounded to 100 Hz
    # (speed to 1/160): resampling cost grows with SAMPLE_RATE / gcd(rates), and a rate
    # coprime to 16000 takes seconds per clip instead of milliseconds.
    source_rate = round(SAMPLE_RATE * speed / 100) * 100
    faster = audio_functional.resample(waveform, source_rate, SAMPLE_RATE)  # (B, ~length / speed)

    # Tempo change by 1 / speed: stretch the STFT in time with the phase vocoder, keeping pitch.
    window = torch.hann_window(n_fft, device=waveform.device)
    spectrum = torch.stft(faster, n_fft, hop_length, window=window, return_complex=True)  # (B, F, frames)
    phase_advance = torch.linspace(0, math.pi * hop_length, spectrum.shape[1], device=waveform.device)[..., None]
    stretched = audio_functional.phase_vocoder(spectrum, 1.0 / speed, phase_advance)
    restored = torch.istft(stretched, n_fft, hop_length, window=window)

    # Pad or trim the few samples that rounding leaves, so the length matches the input.
    if restored.shape[-1] < length:
        restored = nn.functional.pad(restored, (0, length - restored.shape[-1]))
    return restored[..., :length]
