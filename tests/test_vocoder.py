"""Tests of the iSTFT vocoder and its losses."""

from __future__ import annotations

import pytest
import torch

from vqkit.tokenizers.speech_features import LogMel
from vqkit.tokenizers.vocoder import (
    ISTFTVocoder,
    mel_l1_loss,
    multi_resolution_stft_loss,
)


def chirp(seconds: float = 0.5) -> torch.Tensor:
    """A 200 Hz to 2 kHz sweep with harmonics, float (1, samples) at 16 kHz."""
    t = torch.arange(int(16_000 * seconds)) / 16_000
    frequency = 200 + 1800 * t / seconds
    phase = 2 * torch.pi * torch.cumsum(frequency, 0) / 16_000
    return (0.3 * torch.sin(phase) + 0.1 * torch.sin(2 * phase))[None]


def test_vocoder_output_length_matches_frames():
    vocoder = ISTFTVocoder(channels=32, num_blocks=2)
    log_mel = LogMel()(torch.randn(2, 8000))

    waveform = vocoder(log_mel)

    assert waveform.shape == (2, log_mel.shape[-1] * 160)
    assert torch.isfinite(waveform).all()


def test_vocoder_rejects_wrong_mel_shape():
    with pytest.raises(ValueError, match=r"\(batch, 80, frames\)"):
        ISTFTVocoder(channels=32, num_blocks=1)(torch.zeros(1, 40, 10))
    with pytest.raises(ValueError, match="n_fft=100 must be at least hop_length=160"):
        ISTFTVocoder(n_fft=100)


def test_losses_are_zero_for_identical_audio():
    audio = chirp()

    assert float(multi_resolution_stft_loss(audio, audio)) == pytest.approx(0.0, abs=1e-5)
    assert float(mel_l1_loss(audio, audio, LogMel())) == pytest.approx(0.0, abs=1e-5)


def test_losses_grow_with_noise():
    audio = chirp()
    noisy = audio + 0.1 * torch.randn(audio.shape, generator=torch.Generator().manual_seed(0))

    assert float(multi_resolution_stft_loss(noisy, audio)) > 0.1
    assert float(mel_l1_loss(noisy, audio, LogMel())) > 0.1


def test_vocoder_learns_one_clip():
    torch.manual_seed(0)
    audio = chirp()
    log_mel = LogMel()
    features = log_mel(audio)
    vocoder = ISTFTVocoder(channels=48, num_blocks=2)
    optimizer = torch.optim.AdamW(vocoder.parameters(), lr=2e-3)

    losses = []
    for _ in range(60):
        prediction = vocoder(features)
        loss = multi_resolution_stft_loss(prediction, audio) + mel_l1_loss(prediction, audio, log_mel)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))

    assert losses[-1] < 0.6 * losses[0]


def test_vocoder_checkpoint_round_trip(tmp_path):
    vocoder = ISTFTVocoder(channels=32, num_blocks=1).eval()
    features = LogMel()(chirp())

    vocoder.save_pretrained(tmp_path / "vocoder")
    loaded = ISTFTVocoder.from_pretrained(tmp_path / "vocoder")

    assert torch.equal(loaded(features), vocoder(features))
