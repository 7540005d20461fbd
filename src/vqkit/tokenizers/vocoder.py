"""A small Vocos-style vocoder: log-mel frames to a 16 kHz waveform through an inverse STFT.

A stack of ConvNeXt blocks maps each mel frame to the log-magnitude and the phase of one STFT
frame, and `torch.istft` turns those into samples. Every system that the speech codec compares
decodes its mel spectrograms with the same vocoder, so differences come from the codes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqkit.hub import VQKitModelMixin
from vqkit.tokenizers.speech_features import LogMel


class ConvNeXtBlock(nn.Module):
    """Depthwise 1-D convolution, LayerNorm and a pointwise MLP, with a residual: (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, hidden: int, kernel_size: int = 7):
        super().__init__()
        self.depthwise = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.pointwise = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))

    def forward(self, x: Tensor) -> Tensor:
        residual = x
        x = self.depthwise(x).transpose(1, 2)  # (B, T, C)
        x = self.pointwise(self.norm(x)).transpose(1, 2)
        return residual + x


class ISTFTVocoder(nn.Module, VQKitModelMixin):
    """Log-mel (B, n_mels, frames) -> waveform float (B, frames * hop_length) at 16 kHz.

    Args:
        n_mels: mel bands of the input, as `LogMel` computes them.
        channels: width of the ConvNeXt stack.
        num_blocks: ConvNeXt blocks.
        n_fft: FFT size of the synthesis STFT.
        hop_length: samples per mel frame (160 = 10 ms at 16 kHz, as in `LogMel`).
    """

    def __init__(self, n_mels: int = 80, channels: int = 192, num_blocks: int = 6, n_fft: int = 640, hop_length: int = 160):
        super().__init__()
        if n_fft < hop_length:
            raise ValueError(f"n_fft={n_fft} must be at least hop_length={hop_length}")
        self.n_mels, self.n_fft, self.hop_length = n_mels, n_fft, hop_length
        self.embed = nn.Conv1d(n_mels, channels, kernel_size=7, padding=3)
        self.blocks = nn.Sequential(*(ConvNeXtBlock(channels, 3 * channels) for _ in range(num_blocks)))
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, 2 * (n_fft // 2 + 1))  # log-magnitude and phase per bin
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, log_mel: Tensor) -> Tensor:
        if log_mel.ndim != 3 or log_mel.shape[1] != self.n_mels:
            raise ValueError(f"expected log-mel frames shaped (batch, {self.n_mels}, frames), got {tuple(log_mel.shape)}")
        x = self.blocks(self.embed(log_mel))  # (B, C, T)
        x = self.head(self.norm(x.transpose(1, 2))).transpose(1, 2)  # (B, 2 * bins, T)
        log_magnitude, phase = x.chunk(2, dim=1)

        # The clamp keeps exp() finite early in training.
        magnitude = log_magnitude.clamp(max=10.0).exp()
        spectrum = torch.polar(magnitude, phase)  # complex (B, bins, T)
        frames = log_mel.shape[-1]
        return torch.istft(
            spectrum, self.n_fft, self.hop_length, window=self.window, center=True, length=frames * self.hop_length
        )


def multi_resolution_stft_loss(prediction: Tensor, target: Tensor, resolutions=((512, 128), (1024, 256), (256, 64))) -> Tensor:
    """Return the mean over STFT resolutions of spectral convergence plus log-magnitude L1.

    prediction, target: float (B, samples), trimmed to the shorter length.
    """
    length = min(prediction.shape[-1], target.shape[-1])
    prediction, target = prediction[..., :length], target[..., :length]
    losses = []
    for n_fft, hop_length in resolutions:
        window = torch.hann_window(n_fft, device=prediction.device)
        predicted = torch.stft(prediction, n_fft, hop_length, window=window, return_complex=True).abs()
        reference = torch.stft(target, n_fft, hop_length, window=window, return_complex=True).abs()
        convergence = torch.linalg.norm(reference - predicted) / torch.linalg.norm(reference).clamp_min(1e-7)
        log_l1 = (reference.clamp_min(1e-7).log() - predicted.clamp_min(1e-7).log()).abs().mean()
        losses.append(convergence + log_l1)
    return torch.stack(losses).mean()


def mel_l1_loss(prediction: Tensor, target: Tensor, log_mel: LogMel) -> Tensor:
    """Return the L1 distance between the log-mel spectrograms of two float (B, samples) waveforms."""
    length = min(prediction.shape[-1], target.shape[-1])
    return (log_mel(prediction[..., :length]) - log_mel(target[..., :length])).abs().mean()
