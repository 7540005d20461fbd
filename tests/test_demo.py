"""The gradio demo app (vqkit.demos), called through gradio_client on loopback servers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

gradio = pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

from vqkit import registry  # noqa: E402
from vqkit.demos import tabs  # noqa: E402
from vqkit.demos.app import build_app  # noqa: E402

VQKIT_SCRIPT = Path(sys.executable).with_name("vqkit")


@pytest.fixture
def empty_registries(monkeypatch):
    monkeypatch.setattr(registry, "_models", {})
    monkeypatch.setattr(tabs, "_tabs", {})


def build_echo_tab() -> None:
    text = gradio.Textbox(label="Text")
    echoed = gradio.Textbox(label="Echo")
    gradio.Button("Echo").click(lambda value: value[::-1], inputs=text, outputs=echoed, api_name="echo")


def test_about_tab_shows_when_nothing_registered(empty_registries, loopback_only, serve):
    url = serve(build_app())

    about = Client(url, verbose=False).predict(api_name="/about")

    assert about.startswith("# vqkit ")
    assert "vector-quantized tokenizers and models" in about
    assert "No pretrained models are registered yet." in about
    assert "this is the only tab" in about
    assert loopback_only == []


def test_about_tab_lists_registered_models_and_tabs(empty_registries, loopback_only, serve):
    registry.register_model("tiny-codec-test", "torch.nn:Identity", "tiny-codec", "Codec used by the demo test")
    tabs.register_tab("Echo", build_echo_tab)
    client = Client(serve(build_app()), verbose=False)

    about = client.predict(api_name="/about")
    echoed = client.predict("abc", api_name="/echo")

    assert "- `tiny-codec-test`: Codec used by the demo test" in about
    assert "- Echo" in about
    assert echoed == "cba"
    assert loopback_only == []


def test_build_app_names_unimportable_tab(empty_registries):
    tabs.register_tab("Broken", "vqkit.no_such_module:build_tab")

    with pytest.raises(ImportError, match="demo tab 'Broken'"):
        build_app()


@pytest.mark.parametrize(
    ("title", "builder", "expected_message"),
    [
        ("About", "vqkit.demos.app:build_app", "reserved"),
        ("  ", "vqkit.demos.app:build_app", "invalid tab title"),
        ("Images", "vqkit.demos.app.build_app", "invalid builder for tab 'Images'"),
        ("Images", None, "invalid builder for tab 'Images'"),
    ],
)
def test_register_tab_rejects_invalid_values(empty_registries, title, builder, expected_message):
    with pytest.raises(ValueError, match=expected_message):
        tabs.register_tab(title, builder)
    assert tabs.list_tabs() == []


def test_register_tab_rejects_conflicting_builder(empty_registries):
    tabs.register_tab("Echo", "tests.echo:build")

    with pytest.raises(ValueError, match="already registered"):
        tabs.register_tab("Echo", "tests.other:build")
    tabs.unregister_tab("Echo")
    assert tabs.list_tabs() == []


@pytest.mark.slow
def test_demo_command_serves_about_tab(loopback_only, find_free_port, tmp_path):
    port = find_free_port()
    url = f"http://127.0.0.1:{port}/"
    log_path = tmp_path / "demo.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(VQKIT_SCRIPT), "demo", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        client = None
        deadline = time.monotonic() + 90
        while client is None and time.monotonic() < deadline and server.poll() is None:
            try:
                client = Client(url, verbose=False)
            except Exception:
                time.sleep(0.5)
        assert server.poll() is None, f"vqkit demo exited early: {log_path.read_text()}"
        assert client is not None, "vqkit demo did not answer within 90 s"

        about = client.predict(api_name="/about")
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert about.startswith("# vqkit ")
    assert loopback_only == []
