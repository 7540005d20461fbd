"""The demo's Speech codec tab and its shipped voice prompts, with tiny untrained codecs."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import soundfile as sf
import torch

gradio = pytest.importorskip("gradio")

from vqkit.data.speech import SpeechCorpus, SpeechCorpusConfig
from vqkit.demos import speech_codec as tab
from vqkit.demos import speech_codec_view as view
from vqkit.demos import speech_prompts, tabs
from vqkit.tokenizers.speech import SpeechCodec
from vqkit.tokenizers.vocoder import ISTFTVocoder

TINY_CODEC = {
    "frame_rate": 50,
    "codebook_size": 16,
    "encoder_channels": 32,
    "decoder_dim": 32,
    "decoder_layers": 1,
    "decoder_heads": 2,
    "mfcc_clusters": 8,
    "latent_dim": 8,
}


def make_codec(**overrides) -> SpeechCodec:
    """A tiny codec with random weights and a tiny random vocoder, in eval mode."""
    torch.manual_seed(0)
    codec = SpeechCodec(**{**TINY_CODEC, **overrides}).eval()
    codec.vocoder = ISTFTVocoder(channels=16, num_blocks=1)
    return codec


@pytest.fixture(scope="module")
def codec() -> SpeechCodec:
    return make_codec()


@pytest.fixture(scope="module")
def rvq_codec() -> SpeechCodec:
    """The baseline's layout: 2 residual codebooks at 25 frames/s, no prompt."""
    return make_codec(frame_rate=25, quantizer="rvq", num_quantizers=2, use_prompt=False)


@pytest.fixture
def tiny_models(monkeypatch, codec, rvq_codec):
    """Make the tab's loader return tiny codecs, and record the requested names."""
    requested = []
    models = {tab.MODELS[0]: codec, tab.MODELS[1]: codec, tab.MODELS[2]: rvq_codec}

    def load(name):
        requested.append(name)
        return models[name]

    monkeypatch.setattr(tab, "load_codec", load)
    return requested


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    if shutil.which("espeak-ng") is None or shutil.which("flite") is None:
        pytest.skip("needs the espeak-ng and flite binaries (Debian packages espeak-ng and flite)")
    cache = tmp_path_factory.mktemp("speech-cache")
    return SpeechCorpus.build(SpeechCorpusConfig.tiny(), cache, progress=False)


def speech_like(seconds: float, sample_rate: int) -> np.ndarray:
    """A float32 (samples,) 220 Hz tone with a slow amplitude change, peak 0.5."""
    t = np.arange(round(seconds * sample_rate)) / sample_rate
    return (0.5 * np.sin(2 * np.pi * 220 * t) * np.sin(np.pi * t / seconds)).astype(np.float32)


# ---- input conversion ---------------------------------------------------------------------------


def test_int16_audio_divided_by_32768():
    samples = np.zeros(1600, dtype=np.int16)
    samples[:4] = [-32768, 0, 16384, 32767]

    waveform, sample_rate = view.audio_to_waveform((16000, samples))

    assert sample_rate == 16000
    assert waveform.dtype == torch.float32
    assert waveform.shape == (1600,)
    assert waveform[:4].tolist() == [-1.0, 0.0, 0.5, 32767 / 32768]


def test_stereo_audio_averaged_to_mono():
    left = np.full(4800, 8192, dtype=np.int16)
    right = np.full(4800, -16384, dtype=np.int16)

    waveform, _ = view.audio_to_waveform((48000, np.stack([left, right], axis=1)))

    assert waveform.shape == (4800,)
    assert torch.allclose(waveform, torch.full((4800,), (0.25 - 0.5) / 2))


def test_unsigned_audio_centred():
    samples = np.array([0, 128, 255] * 800, dtype=np.uint8)

    waveform, _ = view.audio_to_waveform((8000, samples))

    assert waveform[:3].tolist() == [-1.0, 0.0, 127 / 128]


def test_48khz_audio_keeps_its_rate(codec):
    samples = speech_like(0.5, 48000)

    waveform, sample_rate = view.audio_to_waveform((48000, samples))
    result = tab.run_codec(codec, waveform, sample_rate)

    assert sample_rate == 48000
    assert torch.equal(waveform, torch.from_numpy(samples))
    assert result.codes.shape == (25,)  # 0.5 s at 50 frames/s
    assert result.audio.shape == (8000,)  # 0.5 s at 16 kHz


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (None, "No audio: upload or record a clip"),
        ((16000, np.zeros(800, dtype=np.int16)), r"0\.050 s long \(800 samples at 16000 Hz\).*at least 0\.1 s"),
        ((44100, np.zeros(0, dtype=np.float32)), r"0\.000 s long"),
        ((16000, np.full(1600, np.nan, dtype=np.float32)), "NaN or infinite samples"),
        ((16000, np.full((1600, 2), np.inf, dtype=np.float64)), "NaN or infinite samples"),
        ((16000, np.zeros((1, 2, 1600), dtype=np.int16)), r"\(samples,\) or \(samples, channels\)"),
        ((16000, np.zeros((1600, 0), dtype=np.int16)), r"\(samples,\) or \(samples, channels\)"),
        ((16000, np.zeros(1600, dtype=bool)), "must be int or float, got bool"),
        ((0, np.zeros(1600, dtype=np.int16)), "positive integer in Hz"),
    ],
)
def test_invalid_audio_rejected(audio, message):
    with pytest.raises(ValueError, match=message):
        view.audio_to_waveform(audio)


def test_duration_limit_is_ten_minutes():
    assert view.check_duration(600 * 16000, 16000) == 600.0

    with pytest.raises(ValueError, match=r"is 10 min 0\.5 s \(600\.5 s\) long, over the limit of 10 min \(600 s\)"):
        view.check_duration(round(600.5 * 16000), 16000)


def test_overlong_recording_rejected_before_conversion():
    # A zero-stride view: 10 min 1 s of 48 kHz audio without allocating it.
    samples = np.broadcast_to(np.zeros(1, dtype=np.int16), (601 * 48000, 2))

    with pytest.raises(ValueError, match=r"10 min 1\.0 s \(601\.0 s\) long, over the limit"):
        view.audio_to_waveform((48000, samples))


def test_audio_file_read_as_mono_float(tmp_path):
    stereo = np.stack([np.full(4410, 0.5, np.float32), np.zeros(4410, np.float32)], axis=1)
    sf.write(tmp_path / "clip.flac", stereo, 44100)

    waveform, sample_rate = view.read_audio_file(tmp_path / "clip.flac")

    assert sample_rate == 44100
    assert waveform.dtype == torch.float32
    assert waveform.shape == (4410,)
    torch.testing.assert_close(waveform, torch.full((4410,), 0.25), atol=1e-4, rtol=0)


def test_unreadable_file_rejected(tmp_path):
    (tmp_path / "notes.wav").write_text("not audio")

    with pytest.raises(ValueError, match=r"Could not read 'notes.wav' as audio .*Upload a WAV, FLAC, OGG or MP3"):
        view.read_audio_file(tmp_path / "notes.wav")
    with pytest.raises(ValueError, match="No audio"):
        view.read_audio_file(None)


def test_overlong_file_rejected_from_its_header(tmp_path, monkeypatch):
    sf.write(tmp_path / "long.wav", np.zeros(601 * 1000, np.int16), 1000)

    def no_read(*args, **kwargs):
        raise AssertionError("the samples of an overlong file must not be read")

    monkeypatch.setattr(sf, "read", no_read)
    with pytest.raises(ValueError, match=r"10 min 1\.0 s \(601\.0 s\) long, over the limit of 10 min"):
        view.read_audio_file(tmp_path / "long.wav")


def test_gradio_audio_round_trips_int16():
    samples = np.array([-32768, -1, 0, 1, 32767] * 1000, dtype=np.int16)

    waveform, sample_rate = view.audio_to_waveform((22050, samples))
    rate, back = view.to_gradio_audio(waveform, sample_rate)

    assert rate == 22050
    assert back.dtype == np.int16
    assert np.array_equal(back, samples)


# ---- running the codec --------------------------------------------------------------------------


def test_reconstruction_codes_and_length(codec):
    waveform = torch.from_numpy(speech_like(1.01, 16000))

    result = tab.run_codec(codec, waveform, 16000)

    assert result.codes.dtype == torch.long
    assert result.codes.shape == (51,)  # ceil(16160 / 320)
    assert torch.equal(result.codes, codec.encode(waveform, 16000)[0])
    assert result.audio.shape == (16160,)
    assert result.input_seconds == pytest.approx(1.01)
    assert not result.converted


def test_voice_conversion_uses_prompt(codec):
    waveform = torch.from_numpy(speech_like(1.0, 16000))
    prompt = (torch.from_numpy(speech_like(2.0, 24000)) * 0.1, 24000)

    converted = tab.run_codec(codec, waveform, 16000, prompt)
    reconstructed = tab.run_codec(codec, waveform, 16000)

    assert converted.converted
    assert torch.equal(converted.codes, reconstructed.codes)
    expected = codec.decode(converted.codes[None], prompt=prompt[0], prompt_sample_rate=24000)[0]
    assert torch.equal(converted.audio, expected)
    assert not torch.equal(converted.audio, reconstructed.audio)


def test_rvq_codes_ignore_prompt(rvq_codec):
    waveform = torch.from_numpy(speech_like(1.0, 16000))
    prompt = (torch.from_numpy(speech_like(1.0, 16000)), 16000)

    result = tab.run_codec(rvq_codec, waveform, 16000, prompt)

    assert result.codes.shape == (25, 2)
    assert not result.converted
    assert torch.equal(result.audio, tab.run_codec(rvq_codec, waveform, 16000).audio)


def test_code_statistics_entropy():
    assert view.code_statistics(torch.tensor([0, 0, 1, 1]), 16) == [(2, 1.0)]
    assert view.code_statistics(torch.tensor([5, 5, 5]), 16) == [(1, 0.0)]
    assert view.code_statistics(torch.tensor([0, 1, 2, 3]), 4) == [(4, 2.0)]
    residual = torch.tensor([[0, 7], [1, 7], [2, 7], [3, 7]])
    assert view.code_statistics(residual, 8) == [(4, 2.0), (1, 0.0)]


def test_summary_lists_rate_and_codes(codec):
    result = view.CodecResult(codes=torch.arange(150) % 4, audio=torch.zeros(48000), input_seconds=3.0, converted=False)

    summary = view.summarize(codec, "tiny", result)

    assert "**`tiny`**: reconstruction, with the input as its own voice prompt." in summary
    assert "| Bitrate | 200 bits/s (50 frames/s x 1 codebook x 4 bits) |" in summary
    assert "| Frame rate | 50 frames/s |" in summary
    assert "| Frames | 150 |" in summary
    assert "| Duration | 3.000 s |" in summary
    assert "| Distinct codes used | 4 of 16 |" in summary
    assert "| Token entropy | 2.00 bits per code (max log2 16 = 4.00) |" in summary
    assert "| Entropy rate | 100.0 bits/s" in summary
    assert "First 100 of 150 code frames:" in summary
    code_line = summary.split("```")[1].strip()
    assert code_line.split() == [str(i % 4) for i in range(100)]


def test_summary_of_residual_codes(rvq_codec):
    codes = torch.stack([torch.arange(10) % 2, torch.full((10,), 3)], dim=1)
    result = view.CodecResult(codes=codes, audio=torch.zeros(6400), input_seconds=0.4, converted=False)

    summary = view.summarize(rvq_codec, "rvq", result, voice="flite-rms")

    assert "reconstruction (this model has no voice prompt)" in summary
    assert "| Bitrate | 200 bits/s (25 frames/s x 2 codebooks x 4 bits) |" in summary
    assert "| Distinct codes used | level 1: 2 of 16, level 2: 1 of 16 |" in summary
    assert "| Token entropy | level 1: 1.00, level 2: 0.00 bits per code" in summary
    code_lines = summary.split("```")[1].strip().splitlines()
    assert code_lines == ["level 1: 0 1 0 1 0 1 0 1 0 1", "level 2: 3 3 3 3 3 3 3 3 3 3"]


def test_summary_names_converted_voice(codec):
    result = view.CodecResult(
        codes=torch.zeros(5, dtype=torch.long), audio=torch.zeros(1600), input_seconds=0.1, converted=True
    )

    assert "**`tiny`**: voice conversion to `flite-rms`." in view.summarize(codec, "tiny", result, "flite-rms")


def test_code_plot_is_rgb_image():
    image = view.plot_codes(torch.arange(200) % 16, 16, 50)

    assert image.dtype == np.uint8
    assert image.shape == (260, 800, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 2


# ---- events -------------------------------------------------------------------------------------


def test_encode_decode_returns_outputs(tiny_models):
    store = tab.CodecStore()
    samples = (speech_like(1.0, 44100) * 32767).astype(np.int16)

    (rate, decoded), summary, image = tab.encode_decode(store, {}, "speech-lscodec-25hz", (44100, samples), None)

    assert rate == 16000
    assert decoded.dtype == np.int16
    assert decoded.shape == (16000,)
    assert "**`speech-lscodec-25hz`**: reconstruction" in summary
    assert "| Frames | 50 |" in summary
    assert image.ndim == 3
    tab.encode_decode(store, {}, "speech-lscodec-25hz", (44100, samples), view.SAME_AS_INPUT)
    assert tiny_models == ["speech-lscodec-25hz"]  # loaded once, then taken from the store


def test_encode_decode_converts_to_shipped_voice(tiny_models):
    prompts = {"flite-rms": (torch.from_numpy(speech_like(2.0, 16000)), 16000)}
    samples = speech_like(1.0, 16000)

    _, summary, _ = tab.encode_decode(tab.CodecStore(), prompts, tab.DEFAULT_MODEL, (16000, samples), "flite-rms")

    assert "voice conversion to `flite-rms`" in summary


@pytest.mark.parametrize(
    ("model", "audio", "voice", "message"),
    [
        (tab.DEFAULT_MODEL, None, None, "No audio"),
        (tab.DEFAULT_MODEL, (16000, np.zeros(100, dtype=np.int16)), None, "at least 0.1 s"),
        (tab.DEFAULT_MODEL, (16000, np.zeros(16000, dtype=np.int16)), "espeak-m7", "unknown prompt voice 'espeak-m7'"),
        ("speech-lscodec-10hz", (16000, np.zeros(16000, dtype=np.int16)), None, "unknown model 'speech-lscodec-10hz'"),
    ],
)
def test_encode_decode_raises_gradio_errors(tiny_models, model, audio, voice, message):
    with pytest.raises(gradio.Error, match=message):
        tab.encode_decode(tab.CodecStore(), {}, model, audio, voice)
    assert tiny_models == []


def test_missing_checkpoint_error_retried(monkeypatch, codec):
    calls = []

    def load(name):
        calls.append(name)
        if len(calls) == 1:
            raise FileNotFoundError("checkpoint folder not found. Train it with `vqkit train speech-codec`")
        return codec

    monkeypatch.setattr(tab, "load_codec", load)
    store = tab.CodecStore()

    with pytest.raises(gradio.Error, match="could not be loaded: checkpoint folder not found. Train it with"):
        store.get(tab.DEFAULT_MODEL)
    assert store.get(tab.DEFAULT_MODEL) is codec
    assert calls == [tab.DEFAULT_MODEL, tab.DEFAULT_MODEL]


def test_codec_value_error_becomes_gradio_error(monkeypatch, tiny_models):
    def reject(*args, **kwargs):
        raise ValueError("the prompt must hold at least 0.02 s of audio")

    monkeypatch.setattr(tab, "run_codec", reject)
    samples = np.zeros(16000, dtype=np.int16)

    with pytest.raises(gradio.Error, match="the prompt must hold at least 0.02 s"):
        tab.encode_decode(tab.CodecStore(), {}, tab.DEFAULT_MODEL, (16000, samples), None)


def test_load_example_returns_int16_clip():
    waveform = torch.tensor([0.0, 0.5, -1.0, 0.25] * 400)

    rate, samples = tab.load_example("flite-rms", {"flite-rms": (waveform, 16000)})

    assert rate == 16000
    assert samples[:4].tolist() == [0, 16384, -32768, 8192]
    assert tab.load_example(None, {}) is None
    with pytest.raises(gradio.Error, match="unknown example voice 'nobody'"):
        tab.load_example("nobody", {})


def test_voice_labels_mark_held_out():
    assert view.voice_label("flite-rms") == "flite-rms (flite, male, held out)"
    assert view.voice_label("espeak-f1-p70-s160") == "espeak-f1-p70-s160 (espeak-ng, female)"
    assert view.voice_label("someone-else") == "someone-else"


def test_build_tab_inside_blocks():
    with gradio.Blocks() as app:
        tab.build_tab()

    dropdowns = [block for block in app.blocks.values() if isinstance(block, gradio.Dropdown)]
    choices = [[value for _, value in dropdown.choices] for dropdown in dropdowns]
    assert list(tab.MODELS) in choices
    assert [view.SAME_AS_INPUT, *speech_prompts.load_voice_prompts()] in choices
    audio = [block for block in app.blocks.values() if isinstance(block, gradio.Audio)]
    assert len(audio) == 2
    api_names = {dependency.api_name for dependency in app.fns.values()}
    assert {"speech_load_example", "speech_encode_decode"} <= api_names


def test_build_tab_without_prompts(monkeypatch, tmp_path):
    monkeypatch.setattr(tab, "load_voice_prompts", lambda: speech_prompts.load_voice_prompts(tmp_path))

    with gradio.Blocks() as app:
        tab.build_tab()

    texts = [block.value for block in app.blocks.values() if isinstance(block, gradio.Markdown)]
    assert any("**No shipped voices**, so only reconstruction works" in text for text in texts)


@pytest.mark.parametrize("file_name", ["stereo.wav", "stereo.flac", "stereo.ogg", "stereo.mp3"])
def test_tab_serves_stereo_upload(tiny_models, tmp_path, loopback_only, serve, file_name):
    """Uploads of each common format are decoded by soundfile in the tab; gradio converts nothing."""
    from gradio_client import Client, handle_file

    stereo = np.stack([speech_like(1.0, 48000), np.zeros(48000, np.float32)], axis=1)
    sf.write(tmp_path / file_name, stereo, 48000)
    with gradio.Blocks() as app:
        tab.build_tab()
    client = Client(serve(app), verbose=False)

    decoded, summary, image = client.predict(
        tab.DEFAULT_MODEL, handle_file(str(tmp_path / file_name)), "flite-rms", api_name="/speech_encode_decode"
    )

    audio, sample_rate = sf.read(decoded, dtype="int16")
    assert sample_rate == 16000
    assert audio.shape == (16000,)
    assert "voice conversion to `flite-rms`" in summary
    assert "| Frames | 50 |" in summary
    assert image.endswith(".png")
    assert tiny_models == [tab.DEFAULT_MODEL]
    assert loopback_only == []


def test_tab_registered_after_codebook_features():
    titles = [entry.title for entry in tabs.list_tabs()]

    assert titles.index("Speech codec") == titles.index("Codebook features") + 1


# ---- voice prompts ------------------------------------------------------------------------------


def test_export_writes_flac_and_readme(tiny_corpus, tmp_path):
    speakers = ["espeak-f2", "flite-slt"]

    prompts = speech_prompts.export_voice_prompts(tmp_path, tiny_corpus, speakers, seconds=5.0, command="make prompts")

    assert [prompt.file_name for prompt in prompts] == ["espeak-f2.flac", "flite-slt.flac"]
    assert [prompt.held_out for prompt in prompts] == [False, True]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["README.md", "espeak-f2.flac", "flite-slt.flac"]
    for prompt, split in zip(prompts, ["test_seen", "test_unseen"]):
        utterances = tiny_corpus.utterances(split, speaker=prompt.speaker)
        expected = min(utterances, key=lambda utterance: abs(utterance.duration_s - 5.0))
        info = sf.info(tmp_path / prompt.file_name)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        audio, _ = sf.read(tmp_path / prompt.file_name, dtype="float32")
        assert np.array_equal(audio, expected.load().numpy()), prompt.speaker
        assert prompt.transcript == expected.sentence
        assert prompt.seconds == pytest.approx(expected.duration_s)

    readme = (tmp_path / "README.md").read_text()
    assert (
        f"| `flite-slt.flac` | flite-slt | flite | female | yes | {prompts[1].seconds:.2f} | {prompts[1].transcript} |"
        in readme
    )
    assert "| `espeak-f2.flac` | espeak-f2 | espeak-ng | female | no |" in readme
    assert "```sh\nmake prompts\n```" in readme


def test_load_voice_prompts_reads_export(tiny_corpus, tmp_path):
    speech_prompts.export_voice_prompts(tmp_path, tiny_corpus, ["flite-slt", "espeak-m1"])

    prompts = speech_prompts.load_voice_prompts(tmp_path)

    assert list(prompts) == ["espeak-m1", "flite-slt"]
    for speaker, (waveform, sample_rate) in prompts.items():
        assert sample_rate == 16000
        assert waveform.dtype == torch.float32
        assert waveform.ndim == 1
        assert waveform.abs().max() > 0.01, speaker
    assert "export_voice_prompts(" in (tmp_path / "README.md").read_text()


@pytest.mark.parametrize(
    ("speakers", "seconds", "message"),
    [
        (["espeak-m7"], 4.0, r"speakers \['espeak-m7'\] are not in the corpus"),
        (["flite-slt", "flite-slt"], 4.0, "without repeats"),
        ([], 4.0, "without repeats"),
        ("flite-slt", 4.0, "without repeats, got 'flite-slt'"),
        (["flite-slt"], 0.0, "seconds must be positive"),
    ],
)
def test_export_rejects_invalid_arguments(tiny_corpus, tmp_path, speakers, seconds, message):
    with pytest.raises(ValueError, match=message):
        speech_prompts.export_voice_prompts(tmp_path, tiny_corpus, speakers, seconds=seconds)
    assert list(tmp_path.iterdir()) == []


def test_load_voice_prompts_missing_folder(tmp_path):
    with pytest.raises(
        FileNotFoundError, match="python -m vqkit.demos.speech_prompts --out checkpoints/speech-prompts"
    ):
        speech_prompts.load_voice_prompts(tmp_path / "absent")


def test_shipped_prompts_cover_eight_speakers():
    folder = speech_prompts.default_prompts_folder()

    prompts = speech_prompts.load_voice_prompts()

    assert sorted(prompts) == sorted(speech_prompts.DEFAULT_SPEAKERS)
    assert sum(speaker in tab.HELDOUT_SPEAKERS for speaker in prompts) == 4
    for speaker, (waveform, sample_rate) in prompts.items():
        assert sample_rate == 16000
        assert 3.0 <= waveform.shape[0] / sample_rate <= 5.0, speaker
        assert 0.05 < float(waveform.abs().max()) <= 1.0, speaker
    size = sum(path.stat().st_size for path in folder.iterdir())
    assert size < 1_000_000
    readme = (folder / "README.md").read_text()
    for speaker in prompts:
        assert f"| `{speaker}.flac` | {speaker} |" in readme
    assert speech_prompts.EXPORT_COMMAND in readme
