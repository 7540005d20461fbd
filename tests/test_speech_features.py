"""Tests of the speech codec's audio features and speaker perturbation."""

from __future__ import annotations

import shutil

import pytest
import torch
import torchaudio.functional as audio_functional

from vqkit.data.speech_synth import get_speaker, synthesize
from vqkit.tokenizers.speech_features import LogMel, MFCCFrames, perturb_speaker

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed (make installs it)")


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    text = "the defining class can have a reference to the module it is part of"
    return torch.from_numpy(synthesize(get_speaker("flite-slt"), text))[None]


def test_log_mel_shape_and_frame_rate():
    waveform = torch.randn(2, 16_000)

    features = LogMel()(waveform)

    assert features.shape == (2, 80, 101)
    assert torch.isfinite(features).all()


def test_mfcc_frames_shape():
    assert MFCCFrames()(torch.randn(3, 8000)).shape == (3, 51, 20)


@needs_flite
@pytest.mark.parametrize("speed", [0.85, 1.15])
def test_perturbation_keeps_length_and_shifts_pitch(speech, speed):
    perturbed = perturb_speaker(speech, speed)
    pitch_before = audio_functional.detect_pitch_frequency(speech, 16_000).median()
    pitch_after = audio_functional.detect_pitch_frequency(perturbed, 16_000).median()

    assert perturbed.shape == speech.shape
    assert torch.isfinite(perturbed).all()
    assert float(pitch_after / pitch_before) == pytest.approx(speed, rel=0.08)


def test_perturbation_at_speed_one_is_identity():
    waveform = torch.randn(1, 4000)

    assert torch.equal(perturb_speaker(waveform, 1.0), waveform)


def test_perturbation_rejects_bad_input():
    with pytest.raises(ValueError, match="speed=3.0 is outside"):
        perturb_speaker(torch.zeros(1, 4000), 3.0)
    with pytest.raises(ValueError, match=r"\(batch, samples\)"):
        perturb_speaker(torch.zeros(4000), 1.1)
