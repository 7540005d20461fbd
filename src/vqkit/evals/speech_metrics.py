"""Metrics of speech codecs: word error rate from a local recogniser, STOI, wideband PESQ,
token entropy and real-time factor.

Speech recognition uses pocketsphinx, whose wheel ships a US English acoustic model and
dictionary, so it runs with no download. The scores come from the `speech-eval` extra
(pocketsphinx, jiwer, pystoi, pesq). All functions take float waveforms in [-1, 1].
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

# Sample rate that pocketsphinx's English model and wideband PESQ expect.
SPEECH_SAMPLE_RATE = 16_000


def _mono_numpy(waveform: Tensor | np.ndarray, sample_rate: int) -> np.ndarray:
    """Return a 1-D float64 array at 16 kHz, resampled with torchaudio when needed."""
    samples = torch.as_tensor(waveform, dtype=torch.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected a mono waveform shaped (samples,), got shape {tuple(samples.shape)}")
    if not torch.isfinite(samples).all():
        raise ValueError("the waveform contains NaN or infinite samples; clean or drop them first")
    if sample_rate != SPEECH_SAMPLE_RATE:
        import torchaudio.functional

        samples = torchaudio.functional.resample(samples, sample_rate, SPEECH_SAMPLE_RATE)
    return samples.double().numpy()


class Transcriber:
    """English speech recognition with pocketsphinx's bundled model.

    Returns lowercase words separated by single spaces, or "" when nothing is recognised.
    """

    def __init__(self):
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=SPEECH_SAMPLE_RATE, loglevel="FATAL")

    def __call__(self, waveform: Tensor | np.ndarray, sample_rate: int) -> str:
        samples = _mono_numpy(waveform, sample_rate)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes()
        self.decoder.start_utt()
        self.decoder.process_raw(pcm, full_utt=True)
        self.decoder.end_utt()
        hypothesis = self.decoder.hyp()
        return " ".join(hypothesis.hypstr.lower().split()) if hypothesis is not None else ""


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Return the corpus word error rate (edits / reference words) with jiwer."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"got {len(references)} references but {len(hypotheses)} hypotheses; pass one of each per utterance")
    if not references or not any(reference.split() for reference in references):
        raise ValueError("word_error_rate needs at least one non-empty reference transcript")
    return float(jiwer.wer(list(references), list(hypotheses)))


def _aligned(reference: Tensor | np.ndarray, degraded: Tensor | np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    reference, degraded = _mono_numpy(reference, sample_rate), _mono_numpy(degraded, sample_rate)
    length = min(len(reference), len(degraded))
    if length < SPEECH_SAMPLE_RATE // 4:
        raise ValueError(f"STOI and PESQ need at least 0.25 s of audio, got {length / SPEECH_SAMPLE_RATE:.3f} s")
    return reference[:length], degraded[:length]


def stoi(reference: Tensor | np.ndarray, degraded: Tensor | np.ndarray, sample_rate: int) -> float:
    """Return the short-time objective intelligibility (0 to 1) of `degraded` against `reference`,
    both (samples,), trimmed to the shorter one."""
    from pystoi import stoi as pystoi_stoi

    reference, degraded = _aligned(reference, degraded, sample_rate)
    return float(pystoi_stoi(reference, degraded, SPEECH_SAMPLE_RATE, extended=False))


def pesq_wideband(reference: Tensor | np.ndarray, degraded: Tensor | np.ndarray, sample_rate: int) -> float:
    """Return wideband PESQ (MOS-LQO, about 1.0 to 4.6) of `degraded` against `reference` at 16 kHz."""
    from pesq import pesq

    reference, degraded = _aligned(reference, degraded, sample_rate)
    return float(pesq(SPEECH_SAMPLE_RATE, reference, degraded, "wb"))


def token_entropy(codes: Tensor, codebook_size: int) -> float:
    """Return the empirical entropy in bits of the code ids in `codes` (any shape), an upper
    bound of ceil(log2(codebook_size)) bits per token."""
    if codes.numel() == 0:
        raise ValueError("token_entropy needs at least one code")
    counts = torch.bincount(codes.flatten().long(), minlength=codebook_size).double()
    probabilities = counts[counts > 0] / counts.sum()
    return float(-(probabilities * probabilities.log2()).sum())


def bitrate(frame_rate: float, codebook_size: int, codebooks: int = 1) -> float:
    """Return the bitrate in bits per second of `codebooks` codes of `codebook_size` entries per frame."""
    return frame_rate * codebooks * math.ceil(math.log2(codebook_size))


def real_time_factor(process: Callable[[], object], audio_seconds: float, repeats: int = 3) -> float:
    """Return the best wall time of `repeats` calls of `process` divided by `audio_seconds`
    (below 1 is faster than real time). Set the thread count before calling, for example
    `torch.set_num_threads(1)` for a one-thread figure."""
    if audio_seconds <= 0:
        raise ValueError(f"audio_seconds must be positive, got {audio_seconds}")
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        process()
        best = min(best, time.perf_counter() - started)
    return best / audio_seconds
