"""Tests of the speech-codec metrics on speech synthesized with flite."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from vqkit.data.speech_synth import get_speaker, synthesize
from vqkit.evals import speech_metrics
from vqkit.evals.speech_metrics import (
    Transcriber,
    bitrate,
    pesq_wideband,
    real_time_factor,
    stoi,
    token_entropy,
    word_error_rate,
)

SENTENCE = "many feel that compile time enforcement of interface specifications helps in the construction of large programs"

needs_flite = pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed (make installs it)")


@pytest.fixture(scope="module")
def speech() -> torch.Tensor:
    return torch.from_numpy(synthesize(get_speaker("flite-slt"), SENTENCE))


@needs_flite
def test_transcriber_recognises_clean_speech(speech):
    hypothesis = Transcriber()(speech, 16_000)

    assert word_error_rate([SENTENCE], [hypothesis]) < 0.3


@needs_flite
def test_transcriber_resamples_input(speech):
    import torchaudio.functional

    at_48k = torchaudio.functional.resample(speech, 16_000, 48_000)

    assert word_error_rate([SENTENCE], [Transcriber()(at_48k, 48_000)]) < 0.3


@needs_flite
def test_noise_raises_word_error_rate(speech):
    noisy = speech + 0.5 * torch.randn(speech.shape, generator=torch.Generator().manual_seed(0))

    assert word_error_rate([SENTENCE], [Transcriber()(noisy.clamp(-1, 1), 16_000)]) > 0.5


def test_word_error_rate_counts_edits():
    assert word_error_rate(["a b c d"], ["a x c"]) == pytest.approx(0.5)
    assert word_error_rate(["a b", "c d"], ["a b", "c d"]) == 0.0


def test_word_error_rate_rejects_bad_input():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="non-empty reference"):
        word_error_rate([""], [""])


@needs_flite
def test_stoi_and_pesq_of_identical_speech(speech):
    assert stoi(speech, speech, 16_000) == pytest.approx(1.0, abs=1e-6)
    assert pesq_wideband(speech, speech, 16_000) > 4.0


@needs_flite
def test_stoi_and_pesq_drop_with_noise(speech):
    noisy = speech + 0.3 * torch.randn(speech.shape, generator=torch.Generator().manual_seed(1))

    assert stoi(speech, noisy, 16_000) < 0.8
    assert pesq_wideband(speech, noisy, 16_000) < 2.0


def test_scores_reject_short_or_bad_audio():
    short = torch.zeros(1000)
    with pytest.raises(ValueError, match="at least 0.25 s"):
        stoi(short, short, 16_000)
    with pytest.raises(ValueError, match="NaN or infinite"):
        stoi(torch.full((8000,), math.nan), torch.zeros(8000), 16_000)
    with pytest.raises(ValueError, match="mono waveform"):
        pesq_wideband(torch.zeros(2, 8000), torch.zeros(2, 8000), 16_000)


def test_token_entropy_of_uniform_and_constant_codes():
    assert token_entropy(torch.arange(256).repeat(4), 256) == pytest.approx(8.0)
    assert token_entropy(torch.zeros(100, dtype=torch.long), 256) == 0.0
    with pytest.raises(ValueError, match="at least one code"):
        token_entropy(torch.zeros(0, dtype=torch.long), 256)


def test_bitrate_matches_lscodec_configs():
    # 50 Hz with 300 codes and 25 Hz with 1024 codes: 0.45 and 0.25 kbps.
    assert bitrate(50, 300) == 450
    assert bitrate(25, 1024) == 250
    assert bitrate(75, 1024, codebooks=8) == 6000


def test_real_time_factor_divides_by_duration(monkeypatch):
    ticks = iter(np.arange(0.0, 10.0, 0.5))
    monkeypatch.setattr(speech_metrics.time, "perf_counter", lambda: float(next(ticks)))

    assert real_time_factor(lambda: None, audio_seconds=2.0, repeats=2) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="audio_seconds must be positive"):
        real_time_factor(lambda: None, audio_seconds=0.0)
