"""Evaluation of the speech codecs: `vqkit eval speech-codec`.

On held-out sentences of the synthesized corpus, separately for training speakers ("seen") and
held-out speakers ("unseen"), it compares LSCodec at 50 and 25 Hz, the RVQ baseline of equal
bitrate, continuous log-mel through the same vocoder, and the unprocessed audio:

- bitrate and the empirical entropy of the codes;
- word error rate of pocketsphinx on the flite voices;
- STOI and wideband PESQ against the original;
- speaker-probe accuracy (logistic regression on a bag of codes, and a GRU) against chance;
- voice conversion: speaker similarity of the converted speech to the target and to the source;
- real-time factor of encoding and decoding on one thread;
- the speech level of the training split, and the fraction of codes that change at half the
  input gain, with and without the codec's input-level scaling (`vqkit.evals.speech_level`).

A reconstruction is decoded with a prompt cut from another sentence of the same speaker, so
the prompt never contains the audio being scored. Results go to `results/speech_codec.json`,
`speech_codec.md` and `speech_codec.png`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from vqkit.data.speech import SpeechCorpus, SpeechCorpusConfig, Utterance
from vqkit.evals import speech_level, speech_metrics
from vqkit.evals.machine import describe_machine
from vqkit.evals.speech_probe import (
    SpeakerEmbedding,
    bag_of_codes,
    frame_statistics,
    gru_probe_accuracy,
    linear_probe_accuracy,
)
from vqkit.tokenizers.speech import SpeechCodec
from vqkit.tokenizers.speech_features import SAMPLE_RATE, LogMel
from vqkit.tokenizers.vocoder import ISTFTVocoder

logger = logging.getLogger(__name__)

DEFAULT_CODECS = ("speech-lscodec-50hz", "speech-lscodec-25hz", "speech-rvq-25hz")
USAGE_ERROR = 2
PROMPT_SECONDS = 4.0


@dataclass(frozen=True)
class SpeechEvalConfig:
    """Sizes of the evaluation; the defaults are the published run."""

    codecs: tuple[str, ...] = DEFAULT_CODECS
    vocoder: str = "speech-vocoder"
    corpus: str = "default"
    sentences: int = 8
    """Held-out sentences per espeak-ng speaker for STOI and PESQ."""
    flite_sentences: int = 16
    """Held-out sentences per flite speaker (these also give the WER)."""
    probe_train_per_speaker: int = 20
    """Training utterances per speaker for the seen-speaker probes and the speaker embedding."""
    conversions_per_speaker: int = 4
    rtf_seconds: float = 10.0


class System:
    """One representation under test: how it tokenizes, reconstructs and converts a waveform."""

    def __init__(self, name: str, codec: SpeechCodec | None = None, vocoder: ISTFTVocoder | None = None):
        self.name, self.codec, self.vocoder = name, codec, vocoder
        self.log_mel = LogMel()

    @property
    def kind(self) -> str:
        if self.codec is not None:
            return "codes"
        return "mel" if self.vocoder is not None else "audio"

    def describe(self) -> dict[str, Any]:
        if self.codec is None:
            return {"kind": self.kind, "bitrate": None}
        codec = self.codec
        return {
            "kind": "codes",
            "bitrate": codec.bitrate,
            "frame_rate": codec.frame_rate,
            "codebooks": codec.num_quantizers,
            "codebook_size": codec.codebook_size,
            "prompted": codec.use_prompt,
        }

    def tokens(self, waveform: Tensor) -> Tensor:
        """Float (samples,) -> long codes (T,) or (T, Q), or float log-mel frames (T, 80)."""
        if self.codec is not None:
            return self.codec.encode(waveform, SAMPLE_RATE)[0].cpu()
        return self.log_mel(waveform[None])[0].T

    def reconstruct(self, waveform: Tensor, prompt: Tensor) -> Tensor:
        """Float (samples,) -> float (samples,) through the system, decoded in the voice of `prompt`."""
        if self.codec is not None:
            codes = self.codec.encode(waveform, SAMPLE_RATE)
            audio = self.codec.decode(codes, prompt=prompt, prompt_sample_rate=SAMPLE_RATE)[0].cpu()
        elif self.vocoder is not None:
            with torch.no_grad():
                audio = self.vocoder(self.log_mel(waveform[None])[..., : waveform.shape[-1] // 160])[0]
        else:
            return waveform
        return torch.nn.functional.pad(audio, (0, max(0, waveform.shape[-1] - audio.shape[-1])))[: waveform.shape[-1]]


def load_systems(config: SpeechEvalConfig, device: str) -> list[System]:
    """Return the unprocessed audio, log-mel through the vocoder, and each codec of `config`."""
    vocoder = ISTFTVocoder.from_pretrained(config.vocoder).eval().to(device)
    systems = [System("unprocessed"), System("mel + vocoder", vocoder=vocoder)]
    for name in config.codecs:
        codec = SpeechCodec.from_pretrained(name).eval().to(device)
        codec.vocoder = vocoder
        systems.append(System(name, codec=codec))
    return systems


def _by_speaker(utterances: list[Utterance]) -> dict[str, list[Utterance]]:
    groups: dict[str, list[Utterance]] = {}
    for item in sorted(utterances, key=lambda u: (u.speaker, u.sentence)):
        groups.setdefault(item.speaker, []).append(item)
    return groups


def reconstruction_metrics(
    systems: list[System], groups: dict[str, list[Utterance]], config: SpeechEvalConfig, transcriber, progress: bool
) -> dict[str, dict[str, Any]]:
    """STOI, PESQ, WER (flite voices) and code entropy of every system on one split."""
    items = []
    for utterances in groups.values():
        count = config.flite_sentences if utterances[0].engine == "flite" else config.sentences
        for index, item in enumerate(utterances[:count]):
            items.append((item, utterances[(index + 1) % len(utterances)]))  # prompt: the next sentence

    results: dict[str, dict[str, Any]] = {}
    for system in systems:
        stoi, pesq, references, hypotheses, codes = [], [], [], [], []
        for item, prompt_item in tqdm(items, desc=f"reconstruct {system.name}", disable=not progress):
            waveform = item.load()
            audio = system.reconstruct(waveform, prompt_item.load()[: int(PROMPT_SECONDS * SAMPLE_RATE)])
            stoi.append(speech_metrics.stoi(waveform, audio, SAMPLE_RATE))
            pesq.append(speech_metrics.pesq_wideband(waveform, audio, SAMPLE_RATE))
            if item.engine == "flite":
                references.append(item.text)
                hypotheses.append(transcriber(audio, SAMPLE_RATE))
            if system.kind == "codes":
                codes.append(system.tokens(waveform))

        row: dict[str, Any] = {
            "utterances": len(items),
            "stoi": sum(stoi) / len(stoi),
            "pesq": sum(pesq) / len(pesq),
            "wer": speech_metrics.word_error_rate(references, hypotheses) if references else None,
            "wer_utterances": len(references),
        }
        if codes:
            row.update(_entropy(torch.cat(codes), system.codec))
        results[system.name] = row
    return results


def _entropy(codes: Tensor, codec: SpeechCodec) -> dict[str, float]:
    """Entropy of the codes in bits per code (mean over levels) and the bitrate it implies."""
    levels = codes.reshape(codes.shape[0], -1).unbind(dim=1)
    entropy = sum(speech_metrics.token_entropy(level, codec.codebook_size) for level in levels) / len(levels)
    return {"entropy_bits": entropy, "entropy_bitrate": entropy * codec.frame_rate * len(levels)}


def probe_accuracies(
    systems: list[System], train: list[Utterance], test: list[Utterance], progress: bool
) -> dict[str, dict[str, float]]:
    """Speaker-probe accuracies (linear and GRU) of each tokenizing system; labels are speaker ids."""
    speakers = sorted({u.speaker for u in train})
    train_y = torch.tensor([speakers.index(u.speaker) for u in train])
    test_y = torch.tensor([speakers.index(u.speaker) for u in test])
    train_audio = [u.load() for u in train]
    test_audio = [u.load() for u in test]

    results = {"chance": {"linear": 1 / len(speakers), "gru": 1 / len(speakers)}}
    for system in systems:
        if system.kind == "audio":
            continue
        train_tokens = [system.tokens(w) for w in tqdm(train_audio, desc=f"probe {system.name}", disable=not progress)]
        test_tokens = [system.tokens(w) for w in test_audio]
        if system.kind == "codes":
            size = system.codec.codebook_size
            features = ([bag_of_codes(t, size) for t in train_tokens], [bag_of_codes(t, size) for t in test_tokens])
            vocabulary = size
        else:
            features = ([frame_statistics(t) for t in train_tokens], [frame_statistics(t) for t in test_tokens])
            vocabulary = None
        results[system.name] = {
            "linear": linear_probe_accuracy(torch.stack(features[0]), train_y, torch.stack(features[1]), test_y),
            "gru": gru_probe_accuracy(train_tokens, train_y, test_tokens, test_y, vocabulary),
        }
    return results


def conversion_similarity(
    systems: list[System],
    groups: dict[str, list[Utterance]],
    embedding: SpeakerEmbedding,
    per_speaker: int,
    progress: bool,
) -> dict[str, dict[str, float]]:
    """Voice conversion within a split: each source sentence is decoded with the next speaker's prompt.

    Similarity is measured to a third sentence of the target and of the source speaker. The row
    "unprocessed" gives the similarities of the unconverted source, the floor of the target score.
    """
    speakers = sorted(groups)
    available = min(len(items) for items in groups.values())
    if per_speaker > available:
        logger.warning(
            "%d conversions per speaker requested, but a speaker of this split has %d held-out sentences; using %d",
            per_speaker, available, available,
        )  # fmt: skip
        per_speaker = available
    pairs = [(s, speakers[(i + 1) % len(speakers)], k) for i, s in enumerate(speakers) for k in range(per_speaker)]

    results = {}
    for system in systems:
        if system.kind == "mel" or (system.codec is not None and not system.codec.use_prompt):
            continue
        to_target, to_source = [], []
        for source, target, k in tqdm(pairs, desc=f"convert {system.name}", disable=not progress):
            source_items, target_items = groups[source], groups[target]
            waveform = source_items[k].load()
            prompt = target_items[(k + 1) % len(target_items)].load()[: int(PROMPT_SECONDS * SAMPLE_RATE)]
            audio = system.reconstruct(waveform, prompt) if system.kind == "codes" else waveform
            to_target.append(embedding.similarity(audio, target_items[(k + 2) % len(target_items)].load()))
            to_source.append(embedding.similarity(audio, source_items[(k + 2) % len(source_items)].load()))
        results[system.name] = {
            "to_target": sum(to_target) / len(to_target),
            "to_source": sum(to_source) / len(to_source),
            "pairs": len(pairs),
        }
    return results


def real_time_factors(
    systems: list[System], utterances: list[Utterance], seconds: float
) -> dict[str, dict[str, float]]:
    """Encode and decode time over audio time on one thread, for a clip of `seconds` joined from utterances."""
    clip = torch.cat([u.load() for u in utterances])
    while clip.shape[-1] < seconds * SAMPLE_RATE:
        clip = torch.cat([clip, clip])
    clip = clip[: int(seconds * SAMPLE_RATE)]
    prompt = utterances[0].load()[: int(PROMPT_SECONDS * SAMPLE_RATE)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = {}
        for system in systems:
            if system.codec is None:
                continue
            codec = system.codec
            codes = codec.encode(clip, SAMPLE_RATE)

            def encode_clip(codec=codec):
                return codec.encode(clip, SAMPLE_RATE)

            def decode_clip(codec=codec, codes=codes):
                return codec.decode(codes, prompt=prompt, prompt_sample_rate=SAMPLE_RATE)

            encode = speech_metrics.real_time_factor(encode_clip, seconds)
            decode = speech_metrics.real_time_factor(decode_clip, seconds)
            results[system.name] = {"encode": encode, "decode": decode}
        return results
    finally:
        torch.set_num_threads(threads)


def evaluate(config: SpeechEvalConfig, device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Run every measurement of the module docstring and return the results as a JSON-ready dict."""
    systems = load_systems(config, device)
    corpus_config = SpeechCorpusConfig.tiny() if config.corpus == "tiny" else SpeechCorpusConfig()
    corpus = SpeechCorpus.build(corpus_config, progress=progress)
    transcriber = speech_metrics.Transcriber()

    train_groups = _by_speaker(corpus.utterances("train"))
    probe_train = [u for items in train_groups.values() for u in items[: config.probe_train_per_speaker]]
    splits = {
        "seen": _by_speaker(corpus.utterances("test_seen")),
        "unseen": _by_speaker(corpus.utterances("test_unseen")),
    }
    for split, groups in splits.items():
        if len(groups) < 2:
            # NOTE: the rows are still written. The tiny test corpus has one unseen speaker.
            logger.warning(
                "The %s split has %d speaker(s), so its speaker probe (chance 100%%) and voice conversion "
                "(to the same speaker) say nothing; use a corpus with at least 2 speakers per split",
                split, len(groups),
            )  # fmt: skip
    embedding = SpeakerEmbedding().fit([u.load() for u in probe_train], [u.speaker for u in probe_train])

    results: dict[str, Any] = {"config": asdict(config), "systems": {s.name: s.describe() for s in systems}}
    results["reconstruction"] = {
        split: reconstruction_metrics(systems, groups, config, transcriber, progress)
        for split, groups in splits.items()
    }

    # Seen speakers: train on training sentences, test on held-out ones. Unseen speakers: half of
    # their held-out sentences train the probe and the other half test it.
    seen_test = [u for items in splits["seen"].values() for u in items]
    unseen = splits["unseen"]
    unseen_train = [u for items in unseen.values() for u in items[: len(items) // 2]]
    unseen_test = [u for items in unseen.values() for u in items[len(items) // 2 :]]
    results["speaker_probe"] = {
        "seen": probe_accuracies(systems, probe_train, seen_test, progress),
        "unseen": probe_accuracies(systems, unseen_train, unseen_test, progress),
    }
    results["voice_conversion"] = {
        split: conversion_similarity(systems, groups, embedding, config.conversions_per_speaker, progress)
        for split, groups in splits.items()
    }
    results["real_time_factor"] = real_time_factors(systems, seen_test[:4], config.rtf_seconds)
    level_clips = [u for items in splits["seen"].values() for u in items[:2]]
    results["input_level"] = {
        "training": speech_level.level_statistics(corpus.utterances("train")),
        "gain_sensitivity": speech_level.gain_sensitivity(systems, level_clips),
    }
    return results


# ---- command line ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqkit eval speech-codec",
        description="Evaluate the speech codecs on held-out sentences of seen and unseen speakers: bitrate, "
        "entropy, WER, STOI, PESQ, speaker probes, voice conversion and real-time factor.",
    )
    defaults = SpeechEvalConfig()
    parser.add_argument("--codecs", nargs="+", default=list(defaults.codecs), help="registered names or folders")
    parser.add_argument("--vocoder", default=defaults.vocoder, help="vocoder for the mel system (name or folder)")
    parser.add_argument("--corpus", default=defaults.corpus, choices=("default", "tiny"), help="speech corpus")
    parser.add_argument("--sentences", type=int, default=defaults.sentences, help="sentences per espeak-ng speaker")
    parser.add_argument(
        "--flite-sentences", type=int, default=defaults.flite_sentences, help="sentences per flite speaker"
    )
    parser.add_argument(
        "--probe-train",
        type=int,
        default=defaults.probe_train_per_speaker,
        help="probe training utterances per speaker",
    )
    parser.add_argument(
        "--conversions", type=int, default=defaults.conversions_per_speaker, help="conversions per speaker"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("results"), help="folder for the result files (default: results)"
    )
    parser.add_argument("--device", default="cpu", help="torch device to run on (default: cpu)")
    parser.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `vqkit eval speech-codec ARGS`, print the Markdown report and return the exit status."""
    from vqkit.evals.speech_codec_report import write_results

    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    for name in ("sentences", "flite_sentences", "probe_train", "conversions"):
        if getattr(args, name) < 2:
            print(f"vqkit eval speech-codec: --{name.replace('_', '-')} must be at least 2", file=sys.stderr)
            return USAGE_ERROR
    config = SpeechEvalConfig(
        codecs=tuple(args.codecs),
        vocoder=args.vocoder,
        corpus=args.corpus,
        sentences=args.sentences,
        flite_sentences=args.flite_sentences,
        probe_train_per_speaker=args.probe_train,
        conversions_per_speaker=args.conversions,
    )
    try:
        results = evaluate(config, device=args.device, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as error:
        print(f"vqkit eval speech-codec: {' '.join(str(error).split())}", file=sys.stderr)
        return USAGE_ERROR
    results = {
        "command": " ".join(["vqkit eval speech-codec", *map(shlex.quote, argv)]),
        "machine": describe_machine(torch.device(args.device)),
        **results,
    }
    print(write_results(args.out, results), end="")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
