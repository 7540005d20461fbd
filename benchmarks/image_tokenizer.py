"""Benchmark vqkit's ImageTokenizer against a diffusers VQModel of the same configuration on the CPU.

Both models get the encoder and decoder of the "small" configuration, the one registered as
image-rqvae-64. The ImageTokenizer quantizes with its D residual levels over one shared
codebook of K codes. The VQModel has a single codebook of the same K. Weights are random,
which does not change the amount of work. Each measurement is one encode+decode round trip
of a batch, timed as images per second. The two models alternate within every repeat, and
the report gives medians and their ratio at 64 x 64 and 256 x 256 pixels, at batch 16 and 1.

The run prints a markdown report, replaces the "## Image tokenizer" section of
docs/benchmarks.md with it, and writes the raw numbers to results/bench_image_tokenizer.json.
Both paths are relative to the working directory.

    vqkit bench image-tokenizer [--quick] [--threads N] [--out-md FILE] [--out-json FILE] [--no-write]
    python benchmarks/image_tokenizer.py [same options]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

# _common comes first: it records whether faiss was imported before torch, then imports torch.
if __package__:
    from . import _common, _report, _timing
else:  # `python benchmarks/image_tokenizer.py` puts benchmarks/ on sys.path instead of importing a package
    import _common
    import _report
    import _timing

import torch  # noqa: E402

logger = logging.getLogger(__name__)

CLI_COMMAND = "vqkit bench image-tokenizer"
SCRIPT_COMMAND = "python benchmarks/image_tokenizer.py"
SECTION_HEADING = "## Image tokenizer"
DEFAULT_MARKDOWN = Path("docs/benchmarks.md")
DEFAULT_JSON = Path("results/bench_image_tokenizer.json")
MODEL_CONFIG = "small"
CONTENDERS = {"vqkit": "vqkit ImageTokenizer", "diffusers": "diffusers VQModel"}


@dataclass(frozen=True)
class BenchConfig:
    """Input shapes and repeat counts of one run."""

    image_sizes: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    repeats: int
    min_seconds: float
    """Each measurement repeats the call until this many seconds have passed (at least one call)."""


FULL = BenchConfig(image_sizes=(64, 256), batch_sizes=(16, 1), repeats=5, min_seconds=0.5)
QUICK = BenchConfig(image_sizes=(32,), batch_sizes=(2, 1), repeats=2, min_seconds=0.0)


def model_kwargs() -> dict[str, object]:
    """Return the ImageTokenizer arguments of the "small" training configuration, defaults filled in."""
    from vqkit.tokenizers.image_train_config import CONFIGS, full_model_kwargs

    return full_model_kwargs(CONFIGS[MODEL_CONFIG].model)


def build_models(kwargs: dict[str, object]) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Return (ImageTokenizer, VQModel) with the same encoder, decoder and codebook size, both in eval mode."""
    from diffusers import VQModel

    from vqkit.tokenizers.image import ImageTokenizer

    torch.manual_seed(0)
    tokenizer = ImageTokenizer(**kwargs, seed=0).eval()
    channels = tuple(kwargs["block_out_channels"])
    vq = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=channels,
        layers_per_block=kwargs["layers_per_block"],
        latent_channels=kwargs["latent_channels"],
        num_vq_embeddings=kwargs["codebook_size"],
        norm_num_groups=kwargs["norm_num_groups"],
        mid_block_add_attention=kwargs["mid_block_attention"],
    ).eval()
    return tokenizer, vq


def count_parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def run_benchmark(config: BenchConfig) -> dict[str, object]:
    """Time both models at every (image size, batch size) and return the rows and the model description."""
    kwargs = model_kwargs()
    tokenizer, vq = build_models(kwargs)
    rows = []
    for image_size in config.image_sizes:
        for batch_size in config.batch_sizes:
            rows.append(time_shape(tokenizer, vq, image_size, batch_size, config))
            logger.info(
                "%dx%d batch %d: ImageTokenizer / VQModel = %.3f", image_size, image_size, batch_size, rows[-1]["ratio"]
            )
    return {
        "config": asdict(config),
        "model": {
            "configuration": MODEL_CONFIG,
            "block_out_channels": list(kwargs["block_out_channels"]),
            "layers_per_block": kwargs["layers_per_block"],
            "latent_channels": kwargs["latent_channels"],
            "codebook_size": kwargs["codebook_size"],
            "depth": kwargs["depth"],
            "downsample_factor": tokenizer.downsample_factor,
            "vqkit_encoder_decoder_parameters": count_parameters(tokenizer.encoder)
            + count_parameters(tokenizer.decoder),
            "diffusers_encoder_decoder_parameters": count_parameters(vq.encoder) + count_parameters(vq.decoder),
        },
        "rows": rows,
    }


def time_shape(tokenizer, vq, image_size: int, batch_size: int, config: BenchConfig) -> dict[str, object]:
    """Time one encode+decode round trip of a random batch with each model; return images/s and their ratio."""
    generator = torch.Generator().manual_seed(image_size * 1000 + batch_size)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    scaled = images * 2.0 - 1.0  # VQModel works on [-1, 1], ImageTokenizer on [0, 1]

    def run_vqkit() -> None:
        tokenizer.decode(tokenizer.encode(images))

    @torch.no_grad()
    def run_diffusers() -> None:
        vq.decode(vq.encode(scaled).latents)

    functions = {"vqkit": run_vqkit, "diffusers": run_diffusers}
    for function in functions.values():
        function()  # warm-up
    seconds = _timing.time_interleaved(functions, config.repeats, config.min_seconds)
    contenders = {}
    for name, values in seconds.items():
        median = statistics.median(values)
        contenders[name] = {"seconds_per_call": median, "images_per_second": batch_size / median, "all_seconds": values}
    ratio = contenders["vqkit"]["images_per_second"] / contenders["diffusers"]["images_per_second"]
    return {"image_size": image_size, "batch_size": batch_size, "contenders": contenders, "ratio": ratio}


# ---- report ------------------------------------------------------------------------------------


def render_section(machine: dict[str, object], command: str, wall_seconds: float, bench: dict[str, object]) -> str:
    """Return the whole "## Image tokenizer" section, ending with a newline."""
    model = bench["model"]
    config = bench["config"]
    load = (
        "The load average is not available on this system."
        if machine["load_average_before"] is None
        else f"1-minute load average: {machine['load_average_before']:.2f} before the run and "
        f"{machine['load_average_after']:.2f} at its end, this run's own threads included."
    )
    header = "\n".join(
        [
            f"Command: `{command}`",
            "",
            f"- Machine: {machine['cpu_model']}, {machine['logical_cpus']} logical CPUs. "
            f"Thread count of torch and FAISS: {machine['threads']}.",
            f"- Versions: vqkit {machine['vqkit']}, torch {machine['torch']}, diffusers {machine['diffusers']}, "
            f"faiss {machine['faiss']}, Python {machine['python']}.",
            f"- Date: {machine['date']}. The run took {wall_seconds:.0f} s. {load}",
        ]
    )
    setup = (
        f"Both models have the encoder and decoder of the `{model['configuration']}` configuration "
        f"(image-rqvae-64): block channels {tuple(model['block_out_channels'])}, "
        f"{model['layers_per_block']} ResNet layer(s) per encoder block, {model['latent_channels']} latent "
        f"channels, downsample factor {model['downsample_factor']}, no attention. Encoder and decoder "
        f"parameters: {model['vqkit_encoder_decoder_parameters']:,} (ImageTokenizer) and "
        f"{model['diffusers_encoder_decoder_parameters']:,} (VQModel). The ImageTokenizer quantizes with "
        f"{model['depth']} residual levels over one shared codebook of {model['codebook_size']} codes and "
        f"decodes all {model['depth']}; the VQModel has one codebook of {model['codebook_size']} codes. "
        "Weights are random. One call is `tok.decode(tok.encode(x))` for the ImageTokenizer, input "
        "checks included, and `vq.decode(vq.encode(2 * x - 1).latents)` for the VQModel, both without "
        f"gradients, on a random float batch. Each value is the median of {config['repeats']} interleaved "
        f"measurements after a warm-up call, each repeating the call for at least {config['min_seconds']} s. "
        "A ratio above 1 means the ImageTokenizer is faster."
    )
    rows = [
        [
            f"{row['image_size']}x{row['image_size']}",
            str(row["batch_size"]),
            _format(row["contenders"]["vqkit"]["images_per_second"]),
            _format(row["contenders"]["diffusers"]["images_per_second"]),
            f"{row['ratio']:.3f}",
        ]
        for row in bench["rows"]
    ]
    columns = ["Input", "Batch", f"{CONTENDERS['vqkit']} (images/s)", f"{CONTENDERS['diffusers']} (images/s)", "Ratio"]
    return "\n\n".join([SECTION_HEADING, header, setup, _report.markdown_table(columns, rows)]) + "\n"


def _format(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


# ---- command line ------------------------------------------------------------------------------


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compare the encode+decode throughput of vqkit's ImageTokenizer with a diffusers "
        "VQModel of the same configuration.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"run in seconds, for smoke tests: {QUICK.image_sizes[0]}x{QUICK.image_sizes[0]} inputs at batch "
        f"{' and '.join(map(str, QUICK.batch_sizes))}, {QUICK.repeats} repeats",
    )
    _common.add_common_arguments(parser, SECTION_HEADING, DEFAULT_MARKDOWN, DEFAULT_JSON)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the report and write it unless --no-write; return the exit status.

    With `argv` None the arguments come from sys.argv, as in `python benchmarks/image_tokenizer.py`.
    """
    return _common.run_section_benchmark(
        argv,
        build_parser,
        (CLI_COMMAND, SCRIPT_COMMAND),
        SECTION_HEADING,
        lambda quick: run_benchmark(QUICK if quick else FULL),
        render_section,
        packages=("diffusers",),
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
