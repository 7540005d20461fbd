"""Benchmark the encode and decode speed of vqkit's speech codecs against EnCodec and Mimi on the CPU.

The contenders are the shipped `speech-lscodec-50hz` and `speech-lscodec-25hz` codecs with the
shared `speech-vocoder`, and the EnCodec (24 kHz, 1.5 kbit/s) and Mimi (8 codebooks, 1.1 kbit/s)
implementations of Hugging Face transformers, built from their default configurations. The
peers' trained weights cannot be downloaded here, so their weights are random, which does not
change the amount of work. Each codec encodes one clip of speech at its own sample rate to
codes, and decodes those codes to a waveform. vqkit's decode includes the voice prompt and the
vocoder. Times are medians of interleaved repeats. The report gives each as a multiple of real
time and as a ratio to EnCodec, the reference peer.

The run prints a markdown report, replaces the "## Speech codec" section of docs/benchmarks.md
with it, and writes the raw numbers to results/bench_speech_codec.json. Both paths are
relative to the working directory.

    vqkit bench speech-codec [--quick] [--threads N] [--out-md FILE] [--out-json FILE] [--no-write]
    python benchmarks/speech_codec.py [same options]
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

# _common comes first: it records whether faiss was imported before torch, then imports torch.
if __package__:
    from . import _common, _report, _timing
else:  # `python benchmarks/speech_codec.py` puts benchmarks/ on sys.path instead of importing a package
    import _common
    import _report
    import _timing

from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torchaudio.functional as audio_functional  # noqa: E402

logger = logging.getLogger(__name__)

CLI_COMMAND = "vqkit bench speech-codec"
SCRIPT_COMMAND = "python benchmarks/speech_codec.py"
SECTION_HEADING = "## Speech codec"
DEFAULT_MARKDOWN = Path("docs/benchmarks.md")
DEFAULT_JSON = Path("results/bench_speech_codec.json")
REFERENCE = "encodec"
ENCODEC_BANDWIDTH_KBPS = 1.5
MIMI_CODEBOOKS = 8
CLIP_VOICE, PROMPT_VOICE = "flite-slt", "espeak-f1-p70-s160"
PROMPT_SECONDS = 3.0


@dataclass(frozen=True)
class BenchConfig:
    """Clip length and repeat counts of one run."""

    clip_seconds: float
    repeats: int
    min_seconds: float
    """Each measurement repeats the call until this many seconds have passed (at least one call)."""


FULL = BenchConfig(clip_seconds=10.0, repeats=5, min_seconds=1.0)
QUICK = BenchConfig(clip_seconds=1.0, repeats=2, min_seconds=0.0)


@dataclass
class Contender:
    """One codec: its name in the report, native sample rate, bitrate and encode/decode calls."""

    label: str
    sample_rate: int
    bitrate: float
    frame_rate: float
    parameters: int
    encode: Callable[[torch.Tensor], object]
    """Waveform (1, samples) at `sample_rate` -> codes."""
    decode: Callable[[object], torch.Tensor]
    """Codes -> waveform."""


# ---- contenders --------------------------------------------------------------------------------


def count_parameters(*modules: torch.nn.Module) -> int:
    return sum(parameter.numel() for module in modules for parameter in module.parameters())


def vqkit_contender(name: str, prompt: torch.Tensor) -> Contender:
    """Load the shipped codec `name` and its vocoder; decoding uses `prompt`, float (samples,) at 16 kHz."""
    from vqkit.tokenizers.speech import SpeechCodec

    codec = SpeechCodec.from_pretrained(name).eval()
    vocoder = codec.vocoder  # loads the vocoder now, outside the timed calls
    rate = codec.sample_rate
    return Contender(
        label=f"vqkit {name}",
        sample_rate=rate,
        bitrate=codec.bitrate,
        frame_rate=codec.frame_rate,
        parameters=count_parameters(codec, vocoder),
        encode=lambda waveform: codec.encode(waveform, rate),
        decode=lambda codes: codec.decode(codes, prompt=prompt, prompt_sample_rate=rate),
    )


def encodec_contender() -> Contender:
    """Build transformers' EnCodec at its default 24 kHz configuration, random weights, 1.5 kbit/s (2 codebooks)."""
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    config = EncodecConfig()
    model = EncodecModel(config).eval()
    codebooks = round(ENCODEC_BANDWIDTH_KBPS * 1000 / (config.frame_rate * math.log2(config.codebook_size)))

    @torch.no_grad()
    def encode(waveform: torch.Tensor):
        return model.encode(waveform[:, None], bandwidth=ENCODEC_BANDWIDTH_KBPS)

    @torch.no_grad()
    def decode(encoded) -> torch.Tensor:
        return model.decode(encoded.audio_codes, encoded.audio_scales)[0]

    return Contender(
        label=f"transformers EnCodec 24 kHz, {codebooks} codebooks",
        sample_rate=config.sampling_rate,
        bitrate=ENCODEC_BANDWIDTH_KBPS * 1000,
        frame_rate=config.frame_rate,
        parameters=count_parameters(model),
        encode=encode,
        decode=decode,
    )


def mimi_contender() -> Contender:
    """Build transformers' Mimi at its default configuration, random weights, `MIMI_CODEBOOKS` codebooks."""
    from transformers import MimiConfig, MimiModel

    torch.manual_seed(0)
    config = MimiConfig()
    model = MimiModel(config).eval()

    @torch.no_grad()
    def encode(waveform: torch.Tensor):
        return model.encode(waveform[:, None], num_quantizers=MIMI_CODEBOOKS).audio_codes

    @torch.no_grad()
    def decode(codes: torch.Tensor) -> torch.Tensor:
        return model.decode(codes)[0]

    return Contender(
        label=f"transformers Mimi, {MIMI_CODEBOOKS} codebooks",
        sample_rate=config.sampling_rate,
        bitrate=config.frame_rate * MIMI_CODEBOOKS * math.ceil(math.log2(config.codebook_size)),
        frame_rate=config.frame_rate,
        parameters=count_parameters(model),
        encode=encode,
        decode=decode,
    )


# ---- measurement -------------------------------------------------------------------------------


def load_speech(seconds: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (clip, prompt): float (samples,) 16 kHz speech from the shipped voice clips.

    The clip repeats the clip voice until it is `seconds` long; the prompt is `PROMPT_SECONDS`
    of another voice.
    """
    from vqkit.demos.speech_prompts import load_voice_prompts

    voices = load_voice_prompts()
    clip, rate = voices[CLIP_VOICE]
    prompt, prompt_rate = voices[PROMPT_VOICE]
    if rate != 16_000 or prompt_rate != 16_000:
        raise ValueError(f"the shipped voice clips must be 16 kHz, got {rate} and {prompt_rate} Hz")
    repeats = math.ceil(seconds * rate / clip.shape[-1])
    return clip.repeat(repeats)[: round(seconds * rate)], prompt[: round(PROMPT_SECONDS * rate)]


def run_benchmark(config: BenchConfig) -> dict[str, object]:
    """Time encode and decode of every contender on one clip; return the rows and the setup."""
    clip, prompt = load_speech(config.clip_seconds)
    contenders = {
        "lscodec-50hz": vqkit_contender("speech-lscodec-50hz", prompt),
        "lscodec-25hz": vqkit_contender("speech-lscodec-25hz", prompt),
        "encodec": encodec_contender(),
        "mimi": mimi_contender(),
    }

    # Each codec reads the clip at its own rate; the resampling is not timed.
    inputs = {
        name: audio_functional.resample(clip, 16_000, contender.sample_rate)[None]
        for name, contender in contenders.items()
    }
    codes = {name: contender.encode(inputs[name]) for name, contender in contenders.items()}  # also the warm-up
    for name, contender in contenders.items():
        contender.decode(codes[name])

    functions = {}
    for name, contender in contenders.items():
        functions[f"{name}/encode"] = lambda c=contender, x=inputs[name]: c.encode(x)
        functions[f"{name}/decode"] = lambda c=contender, z=codes[name]: c.decode(z)
    seconds = _timing.time_interleaved(functions, config.repeats, config.min_seconds)

    rows = {}
    for name, contender in contenders.items():
        row = {
            "label": contender.label,
            "sample_rate": contender.sample_rate,
            "bitrate": contender.bitrate,
            "frame_rate": contender.frame_rate,
            "parameters": contender.parameters,
        }
        for step in ("encode", "decode"):
            values = seconds[f"{name}/{step}"]
            row[step] = {"seconds": statistics.median(values), "all_seconds": values}
            row[step]["times_real_time"] = config.clip_seconds / row[step]["seconds"]
        rows[name] = row
    for row in rows.values():
        for step in ("encode", "decode"):
            row[step]["ratio_to_reference"] = rows[REFERENCE][step]["seconds"] / row[step]["seconds"]
        logger.info(
            "%s: encode %.0fx, decode %.0fx real time",
            row["label"], row["encode"]["times_real_time"], row["decode"]["times_real_time"],
        )  # fmt: skip
    return {"config": asdict(config), "clip_voice": CLIP_VOICE, "prompt_voice": PROMPT_VOICE, "rows": rows}


# ---- report ------------------------------------------------------------------------------------


def render_section(machine: dict[str, object], command: str, wall_seconds: float, bench: dict[str, object]) -> str:
    """Return the whole "## Speech codec" section, ending with a newline."""
    config = bench["config"]
    header = "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"- Machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs. "
            f"Thread count of torch: {machine['threads']}.",
            f"- Versions: vqkit {machine['vqkit']}, torch {machine['torch']}, transformers {machine['transformers']}, "
            f"Python {machine['python']}.",
            f"- Date: {machine['date']}. The run took {wall_seconds:.0f} s. {_report.describe_load(machine)}",
        ]
    )
    setup = (
        f"One clip of {config['clip_seconds']:g} s of speech (the shipped `{bench['clip_voice']}` voice clip, "
        "repeated), batch 1, resampled to each codec's sample rate before timing. Encode turns the "
        "waveform into codes. Decode turns the codes into a waveform; for vqkit that includes a "
        f"{PROMPT_SECONDS:g} s voice prompt (`{bench['prompt_voice']}`) and the iSTFT vocoder. The vqkit codecs "
        "are the shipped checkpoints. EnCodec and Mimi are the transformers implementations at their "
        "default configurations with random weights, because their trained weights cannot be downloaded "
        "here. Random weights do the same amount of work, but say nothing about quality. Each time is the "
        f"median of {config['repeats']} interleaved measurements after a warm-up call, each repeating the "
        f'call for at least {config["min_seconds"]:g} s. "x real time" is audio seconds per second of '
        "computation. The ratios divide EnCodec's time by each codec's, so above 1 means faster than EnCodec."
    )
    rows = []
    for row in bench["rows"].values():
        rows.append(
            [
                row["label"],
                f"{row['bitrate']:g}",
                f"{row['frame_rate']:g}",
                f"{row['sample_rate'] / 1000:g} kHz",
                f"{row['parameters'] / 1e6:.1f}M",
                f"{row['encode']['times_real_time']:.0f}",
                f"{row['decode']['times_real_time']:.0f}",
                f"{row['encode']['ratio_to_reference']:.2f}",
                f"{row['decode']['ratio_to_reference']:.2f}",
            ]
        )
    columns = [
        "Codec", "Bitrate (bit/s)", "Frames/s", "Audio", "Parameters", "Encode (x real time)",
        "Decode (x real time)", "Encode vs EnCodec", "Decode vs EnCodec",
    ]  # fmt: skip
    return "\n\n".join([SECTION_HEADING, header, setup, _report.markdown_table(columns, rows)]) + "\n"


# ---- command line ------------------------------------------------------------------------------


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare the encode and decode speed of vqkit's speech codecs with transformers' EnCodec and Mimi.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"run in seconds, for smoke tests: a {QUICK.clip_seconds:g} s clip, {QUICK.repeats} repeats",
    )
    _common.add_common_arguments(parser, SECTION_HEADING, DEFAULT_MARKDOWN, DEFAULT_JSON)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report and write it unless --no-write; return the exit status.

    With `argv` None the arguments come from sys.argv, as in `python benchmarks/speech_codec.py`.
    """
    return _common.run_section_benchmark(
        argv,
        build_parser,
        (CLI_COMMAND, SCRIPT_COMMAND),
        SECTION_HEADING,
        lambda quick: run_benchmark(QUICK if quick else FULL),
        render_section,
        packages=("transformers",),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
