"""Input-level measurements of `vqkit eval speech-codec`: the training speech's level and how codes follow gain.

`SpeechCodec.input_level_db` scales input to one speech level before encoding. These
measurements report the level distribution that value comes from, and the fraction of codes
that change when a clip is played at another gain, with the scaling and without it.
"""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
import torch

from vqkit.data.speech import Utterance
from vqkit.tokenizers.speech_audio import speech_levels_db
from vqkit.tokenizers.speech_features import SAMPLE_RATE

GAIN = 0.5
"""Gain of the changed copy in `gain_sensitivity`: half the amplitude, -6 dB."""


def level_statistics(utterances: list[Utterance]) -> dict[str, float]:
    """Return the median, 5th and 95th percentile of the utterances' active speech levels in dB re full scale."""
    levels = speech_levels_db(item.load() for item in utterances)
    low, high = np.percentile(levels, [5, 95])
    return {"utterances": len(levels), "median_db": statistics.median(levels), "p5_db": low, "p95_db": high}


def _changed_fraction(codec, clips: list[torch.Tensor], gain: float) -> float:
    """Return the fraction of code entries that differ between each clip and the clip times `gain`."""
    changed = total = 0
    for clip in clips:
        reference = codec.encode(clip, SAMPLE_RATE)
        scaled = codec.encode(gain * clip, SAMPLE_RATE)
        changed += int((scaled != reference).sum())
        total += reference.numel()
    return changed / total


def gain_sensitivity(systems: list[Any], utterances: list[Utterance], gain: float = GAIN) -> dict[str, dict]:
    """Return, per codec system, the fraction of codes that change when the input is scaled by `gain`.

    "scaled" uses the codec as configured, "unscaled" the same codec with `input_level_db`
    set to None for the measurement. Systems without a codec are skipped.
    """
    clips = [item.load() for item in utterances]
    results = {}
    for system in systems:
        codec = system.codec
        if codec is None:
            continue
        configured = codec.input_level_db
        try:
            codec.input_level_db = None
            unscaled = _changed_fraction(codec, clips, gain)
        finally:
            codec.input_level_db = configured
        row = {"input_level_db": configured, "unscaled": unscaled, "clips": len(clips), "gain": gain}
        row["scaled"] = None if configured is None else _changed_fraction(codec, clips, gain)
        results[system.name] = row
    return results
