"""The demo's Image tokenizer tab, called through gradio_client and loaded in headless Chromium, on loopback servers."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from PIL import Image

gradio = pytest.importorskip("gradio")
from gradio_client import Client, handle_file  # noqa: E402

from vqkit import registry  # noqa: E402
from vqkit.data.images import load_photo  # noqa: E402
from vqkit.demos import image_tokenizer as tab  # noqa: E402
from vqkit.demos.app import build_app  # noqa: E402
from vqkit.evals import metrics  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def tiny_model_env(tiny_image_tokenizer_dir, monkeypatch):
    monkeypatch.setenv(tab.MODEL_ENV, str(tiny_image_tokenizer_dir))


@pytest.fixture
def crop_png(tmp_path) -> Path:
    """A 40 x 62 crop of a held-out photo as PNG."""
    path = tmp_path / "crop.png"
    Image.fromarray(np.array(load_photo("coffee")[150:190, 200:262])).save(path)
    return path


def read_png(path: str) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def markdown_values(url: str) -> list[str]:
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        config = json.load(response)
    return [
        component["props"]["value"]
        for component in config["components"]
        if component.get("type") == "markdown" and component.get("props", {}).get("value")
    ]


def test_tab_tokenizes_uploaded_image(tiny_model_env, tiny_image_tokenizer, crop_png, loopback_only, serve):
    client = Client(serve(build_app()), verbose=False)

    summary, code_map, gallery = client.predict(handle_file(str(crop_png)), api_name="/tokenize_image")

    assert "Image 40 x 62 pixels: a 20 x 31 code grid with 3 codes per position" in summary
    assert read_png(code_map).shape == (40, 62, 3)
    assert [item["caption"].split(":")[0] for item in gallery] == ["depth 1", "depth 2", "depth 3"]
    original = np.asarray(Image.open(crop_png))
    for depth, item in enumerate(gallery, start=1):
        expected = tiny_image_tokenizer.reconstruct(original, depth=depth)[0]
        expected_pixels = expected.mul(255).round().byte().permute(1, 2, 0).numpy()
        assert np.array_equal(read_png(item["image"]), expected_pixels), f"depth {depth}"
        assert f"{metrics.psnr(original, expected):.2f} dB" in item["caption"], f"depth {depth}"
    assert loopback_only == []


def test_tab_edit_changes_local_pixels(tiny_model_env, crop_png, loopback_only, serve):
    client = Client(serve(build_app()), verbose=False)
    client.predict(handle_file(str(crop_png)), api_name="/tokenize_image")

    message, edited, difference = client.predict(1, 10, 15, 7, api_name="/edit_image_code")

    assert message.startswith(
        "Code at depth 1, row 10, column 15 (pixels 20 to 21 down, 30 to 31 across) changed from "
    )
    assert " to 7." in message
    assert read_png(edited).shape == (40, 62, 3)
    assert read_png(difference).shape == (40, 62, 3)
    assert loopback_only == []


@pytest.fixture(scope="module")
def crop_state(tiny_image_tokenizer):
    """The codes state that the tab's tokenize step returns for a 40 x 62 crop (a 20 x 31 code grid)."""
    return tab.tokenize(tiny_image_tokenizer, np.array(load_photo("coffee")[150:190, 200:262]))[3]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((4, 0, 0, 0), "depth 4 is out of range: it must be from 1 to 3"),
        ((1, 20, 0, 0), "row 20 is out of range: it must be from 0 to 19"),
        ((1, 0, 31, 0), "column 31 is out of range: it must be from 0 to 30"),
        ((1, 0, 0, 64), "new code id 64 is out of range: it must be from 0 to 63"),
        ((1, 0.5, 0, 0), "row must be a whole number from 0 to 19, got 0.5"),
    ],
)
def test_tab_edit_rejects_invalid_values(tiny_image_tokenizer, crop_state, values, message):
    with pytest.raises(gradio.Error, match=message):
        tab.edit_code(tiny_image_tokenizer, crop_state, *values)


def test_tab_edit_needs_tokenized_image(tiny_image_tokenizer):
    with pytest.raises(gradio.Error, match="Tokenize an image first"):
        tab.edit_code(tiny_image_tokenizer, None, 1, 0, 0, 0)


def test_tab_loads_example_photo(tiny_model_env, loopback_only, serve):
    client = Client(serve(build_app()), verbose=False)

    photo = client.predict("rocket", api_name="/load_example_photo")

    assert np.array_equal(read_png(photo), load_photo("rocket"))
    assert loopback_only == []


def test_tab_downscales_large_images(tiny_image_tokenizer):
    wide = np.zeros((300, 1024, 3), dtype=np.uint8)

    summary = tab.tokenize(tiny_image_tokenizer, wide)[0]
    assert "Image 150 x 512 pixels (downscaled from 300 x 1024)" in summary


def test_missing_checkpoint_shows_train_command(monkeypatch, tmp_path, loopback_only, serve):
    monkeypatch.delenv(tab.MODEL_ENV, raising=False)
    monkeypatch.setattr(registry, "checkpoints_root", lambda: tmp_path)

    texts = markdown_values(serve(build_app()))

    notice = next(text for text in texts if "could not be loaded" in text)
    assert "`image-rqvae-64`" in notice
    assert "vqkit train image-tokenizer --config small --out checkpoints/image-rqvae-64" in notice
    assert loopback_only == []


def test_page_shows_tab_in_chromium(tiny_model_env, serve, is_loopback_host):
    if not CHROMIUM.is_file():
        pytest.skip(f"Chromium not found at {CHROMIUM}; install the Debian package chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    url = serve(build_app())
    served, blocked = [], []

    def allow_loopback_only(route):
        # Requests to other hosts are aborted before they leave the browser, then reported.
        request_url = route.request.url
        if is_loopback_host(urlsplit(request_url).hostname or ""):
            served.append(request_url)
            route.continue_()
        else:
            blocked.append(request_url)
            route.abort()

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", allow_loopback_only)
            page.goto(url, timeout=60_000)
            tab_button = page.get_by_role("tab", name="Image tokenizer")
            tab_button.wait_for(timeout=60_000)
            tab_button.click()
            tokenize_button = page.get_by_role("button", name="Tokenize")
            tokenize_button.wait_for(timeout=30_000)
            assert tokenize_button.is_visible()
        finally:
            browser.close()
    assert served, "the page made no request to the loopback server"
    assert blocked == [], f"the page requested other hosts: {blocked}"
