"""Building blocks of the speech codec: a convolutional log-mel encoder and a prompt-conditioned
transformer decoder.

The encoder has a bounded receptive field (`MelEncoder.context_frames`). A long input can
therefore be encoded in chunks with that much context on each side. The chunks give the codes
of one pass, up to float rounding where two codes are nearly tied.
The decoder reads the frames of a voice prompt followed by the content frames and returns
features for the content frames only. Positions come from a depthwise convolution, so it has
no fixed maximum length.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ResidualConvBlock(nn.Module):
    """GELU, dilated 3-tap convolution, GELU, pointwise convolution, plus the input: (B, C, T) -> (B, C, T)."""

    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.GELU(),
            nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation),
            nn.GELU(),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class MelEncoder(nn.Module):
    """Log-mel (B, n_mels, frames) at 100 Hz -> (B, out_channels, frames // downsample).

    Args:
        n_mels: mel bands of the input.
        channels: width of the convolutions.
        out_channels: channels of the output (twice the latent size for a mean and a log-variance).
        downsample: a power of two; each factor of 2 is one strided convolution.
    """

    def __init__(self, n_mels: int, channels: int, out_channels: int, downsample: int):
        super().__init__()
        if downsample < 1 or downsample & (downsample - 1):
            raise ValueError(f"downsample must be a power of two, got {downsample}")
        layers: list[nn.Module] = [nn.Conv1d(n_mels, channels, 5, padding=2)]
        layers += [ResidualConvBlock(channels, 1), ResidualConvBlock(channels, 3)]
        for _ in range(int(math.log2(downsample))):
            layers.append(nn.GELU())
            layers.append(nn.Conv1d(channels, channels, 4, stride=2, padding=1))
            layers += [ResidualConvBlock(channels, 1), ResidualConvBlock(channels, 3)]
        layers += [nn.GELU(), nn.Conv1d(channels, out_channels, 1)]
        self.net = nn.Sequential(*layers)
        self.downsample = downsample

    @property
    def context_frames(self) -> int:
        """Input frames on each side that reach one output frame, rounded up to a multiple of `downsample`.

        The first convolution reaches 2 frames, each pair of residual blocks 4 frames at its
        own rate, and each strided convolution 2 frames at the finer rate.
        """
        frames, scale = 2 + 4, 1
        for _ in range(int(math.log2(self.downsample))):
            frames += 2 * scale
            scale *= 2
            frames += 4 * scale
        return math.ceil(frames / self.downsample) * self.downsample

    def forward(self, log_mel: Tensor) -> Tensor:
        return self.net(log_mel)


class PromptDecoder(nn.Module):
    """Transformer over [prompt frames; content frames] that returns the content frames.

    Args:
        latent_dim: channels of the content input.
        n_mels: mel bands of the prompt.
        dim: transformer width.
        layers, heads: transformer depth and attention heads.
        downsample: mel frames per content frame; the prompt is brought to the content rate.
        use_prompt: False builds a decoder without the prompt branch (the RVQ baseline).

    Shapes:
        content (B, latent_dim, T); prompt log-mel (B, n_mels, P * downsample) or None
        -> (B, T, dim).
    """

    def __init__(
        self, latent_dim: int, n_mels: int, dim: int, layers: int, heads: int, downsample: int, use_prompt: bool
    ):
        super().__init__()
        self.content_in = nn.Conv1d(latent_dim, dim, 3, padding=1)
        self.prompt_in = None
        if use_prompt:
            self.prompt_in = nn.Sequential(
                nn.Conv1d(n_mels, dim, 5, padding=2), nn.GELU(), nn.Conv1d(dim, dim, downsample, stride=downsample)
            )
        self.segment = nn.Parameter(torch.zeros(2, dim))  # 0: prompt, 1: content
        self.position = nn.Conv1d(dim, dim, 15, padding=7, groups=dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def _embed(self, x: Tensor, segment: int) -> Tensor:
        """(B, dim, T) -> (B, T, dim) with the convolutional position and the segment embedding."""
        x = x + self.position(x)
        return x.transpose(1, 2) + self.segment[segment]

    def forward(self, content: Tensor, prompt: Tensor | None = None) -> Tensor:
        frames = content.shape[-1]
        parts = [self._embed(self.content_in(content), 1)]
        if self.prompt_in is not None and prompt is not None:
            parts.insert(0, self._embed(self.prompt_in(prompt), 0))
        x = self.transformer(torch.cat(parts, dim=1))  # (B, P + T, dim)
        return self.norm(x[:, -frames:])
