"""Fixtures shared by several test files: tiny image tokenizers, loopback servers and benchmark runs."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
import socket
from pathlib import Path

import pytest
import torch

from vqkit.data.images import PhotoCrops
from vqkit.tokenizers.image import ImageTokenizer
from vqkit.tokenizers.image_train_config import CONFIGS, full_model_kwargs


def build_tiny_image_tokenizer(**overrides) -> ImageTokenizer:
    """Return the "tiny" configuration (K=64, depth 3, factor 2) in eval mode, its codebook fitted by k-means on photo crops."""
    torch.manual_seed(0)
    model = ImageTokenizer(**{**full_model_kwargs(CONFIGS["tiny"].model), **overrides, "seed": 0})
    model(torch.stack([PhotoCrops(32)[i] for i in range(8)]))
    return model.eval()


@pytest.fixture(scope="session")
def make_tiny_image_tokenizer():
    """The function `build_tiny_image_tokenizer`, for tests that need other constructor arguments."""
    return build_tiny_image_tokenizer


@pytest.fixture(scope="session")
def tiny_image_tokenizer() -> ImageTokenizer:
    return build_tiny_image_tokenizer()


@pytest.fixture(scope="session")
def tiny_image_tokenizer_dir(tiny_image_tokenizer, tmp_path_factory):
    """A checkpoint folder of `tiny_image_tokenizer`, written by save_pretrained."""
    folder = tmp_path_factory.mktemp("tiny-image-tokenizer") / "model"
    tiny_image_tokenizer.save_pretrained(folder)
    return folder


# ---- loopback servers ---------------------------------------------------------------------------


def _find_free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%")[0]).is_loopback
    except ValueError:
        return host == "localhost"


@pytest.fixture(scope="session")
def find_free_port():
    """The function `_find_free_port`: a TCP port on 127.0.0.1 that is free when it returns."""
    return _find_free_port


@pytest.fixture(scope="session")
def is_loopback_host():
    """The function `_is_loopback_host`, for tests that check the hosts a browser requests."""
    return _is_loopback_host


@pytest.fixture
def loopback_only(monkeypatch):
    """Block and record every outgoing connection of this process that is not to a loopback address."""
    blocked = []

    def guarded(real):
        def connect(sock, address):
            if isinstance(address, tuple) and not _is_loopback_host(str(address[0])):
                blocked.append(address)
                raise OSError(f"test blocked a connection to {address!r}")
            return real(sock, address)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(socket.socket.connect_ex))
    return blocked


@pytest.fixture
def serve():
    """Return a function that serves a gradio app on a free loopback port and returns its URL."""
    apps = []

    def start(app) -> str:
        port = _find_free_port()
        app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        apps.append(app)
        return f"http://127.0.0.1:{port}/"

    yield start
    for app in apps:
        app.close()


# ---- benchmark runs -----------------------------------------------------------------------------


def _run_benchmark_main(benchmark, argv: list[str]) -> tuple[int, str]:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        status = benchmark.main(argv)
    return status, output.getvalue()


def _run_benchmark_with_outputs(
    benchmark, folder: Path, markdown_text: str, argv: list[str]
) -> tuple[int, str, str, dict]:
    """Run `benchmark.main(argv)` with --out-md and --out-json pointing into `folder`.

    The markdown file starts as `markdown_text`. Returns the exit status, the printed report,
    the markdown file's text after the run and the parsed JSON results.
    """
    markdown = folder / "benchmarks.md"
    markdown.write_text(markdown_text, encoding="utf-8")
    results_path = folder / "results" / benchmark.DEFAULT_JSON.name
    status, printed = _run_benchmark_main(
        benchmark, [*argv, "--out-md", str(markdown), "--out-json", str(results_path)]
    )
    results = json.loads(results_path.read_text(encoding="utf-8"))
    return status, printed, markdown.read_text(encoding="utf-8"), results


@pytest.fixture(scope="session")
def run_benchmark():
    """The function `_run_benchmark_main`, which calls `benchmark.main(argv)` and returns its exit status and stdout."""
    return _run_benchmark_main


@pytest.fixture(scope="session")
def run_benchmark_with_outputs():
    """The function `_run_benchmark_with_outputs`, for runs that write the markdown and JSON files."""
    return _run_benchmark_with_outputs
