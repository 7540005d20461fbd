"""Tests of `SpeechCodec`: shapes, bitrates, block-wise encoding, input handling and checkpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch

from vqkit.tokenizers.speech import SpeechCodec
from vqkit.tokenizers.speech_audio import (
    AudioBlocks,
    active_level_db,
    frame_power,
    level_gain,
    prepare_waveform,
)
from vqkit.tokenizers.vocoder import ISTFTVocoder

TINY = {
    "encoder_channels": 16,
    "decoder_dim": 16,
    "decoder_layers": 1,
    "decoder_heads": 2,
    "mfcc_clusters": 4,
    "latent_dim": 4,
    "codebook_size": 16,
}


def tiny_codec(**overrides) -> SpeechCodec:
    torch.manual_seed(0)
    codec = SpeechCodec(**{**TINY, **overrides}).eval()
    codec.vocoder = ISTFTVocoder(channels=8, num_blocks=1)
    return codec


def spread_codes(codec: SpeechCodec, wave: torch.Tensor) -> SpeechCodec:
    """Set the codebook to encoder means of `wave` at 1/4 and 4x its level, so that codes vary with the input."""
    frames = []
    for gain in (0.25, 4.0):
        mean, _ = codec.encode_mel(codec.mel_frames(gain * wave[None, : wave.shape[-1] // 640 * 640]))
        frames.append(mean[0].T)
    frames = torch.cat(frames)
    picks = torch.randperm(frames.shape[0], generator=torch.Generator().manual_seed(0))[: codec.codebook_size]
    codec.quantizer.codebook.set_codes(frames[picks].detach())
    return codec


def speech_like(seconds: float, sample_rate: int = 16_000, channels: int | None = None) -> torch.Tensor:
    """A harmonic tone with a slow amplitude envelope, float (samples,) or (1, channels, samples)."""
    t = torch.arange(round(seconds * sample_rate)) / sample_rate
    wave = 0.3 * torch.sin(2 * math.pi * 180 * t) * (0.6 + 0.4 * torch.sin(2 * math.pi * 3 * t))
    wave = wave + 0.1 * torch.sin(2 * math.pi * 900 * t)
    if channels is not None:
        wave = wave.expand(1, channels, -1).clone()
    return wave


@pytest.mark.parametrize(
    ("overrides", "bitrate"),
    [
        ({"frame_rate": 50, "codebook_size": 300}, 450),
        ({"frame_rate": 25, "codebook_size": 1024}, 250),
        ({"frame_rate": 25, "codebook_size": 512, "quantizer": "rvq", "num_quantizers": 2, "use_prompt": False}, 450),
    ],
)
def test_bitrate_is_frames_times_bits(overrides, bitrate):
    assert SpeechCodec(**{**TINY, **overrides}).bitrate == bitrate


@pytest.mark.parametrize("frame_rate", [50, 25])
def test_encode_decode_shapes(frame_rate):
    codec = tiny_codec(frame_rate=frame_rate)
    wave = torch.stack([speech_like(1.03), speech_like(1.03) * 0.5])
    codes = codec.encode(wave, 16_000)
    frames = math.ceil(wave.shape[-1] / codec.samples_per_frame)
    assert codes.shape == (2, frames)
    assert codes.dtype == torch.long
    assert int(codes.max()) < codec.codebook_size
    audio = codec.decode(codes, prompt=speech_like(1.0), prompt_sample_rate=16_000)
    assert audio.shape == (2, frames * codec.samples_per_frame)
    assert torch.isfinite(audio).all()


def test_residual_codes_have_a_level_axis():
    codec = tiny_codec(frame_rate=25, quantizer="rvq", num_quantizers=2, use_prompt=False, mfcc_clusters=0)
    codes = codec.encode(speech_like(0.5), 16_000)
    assert codes.shape == (1, math.ceil(8000 / 640), 2)
    assert codec.decode(codes).shape == (1, codes.shape[1] * 640)
    with pytest.raises(ValueError, match=r"\(batch, frames, 2\)"):
        codec.decode(codes[..., 0])


@pytest.mark.parametrize("frame_rate", [50, 25])
def test_block_encoding_matches_one_pass(frame_rate):
    """Blocks of 1 s with 1 s of context give the codes of a single pass over 3.3 s."""
    codec = tiny_codec(frame_rate=frame_rate)
    wave = speech_like(3.3) + 0.05 * torch.randn(52_800, generator=torch.Generator().manual_seed(0))
    whole = codec.encode(wave, 16_000, block_seconds=30)
    blocks = codec.encode(wave, 16_000, block_seconds=1)
    assert torch.equal(whole, blocks)


def test_encoder_context_covers_receptive_field():
    """An impulse changes no encoder output further than `context_frames` input frames away."""
    codec = tiny_codec(frame_rate=25)
    encoder = codec.encoder
    x = torch.zeros(1, 80, 400)
    base = encoder(x)
    x[..., 200] = 5.0
    changed = (encoder(x) - base).abs().sum(dim=1)[0] > 0
    reached = changed.nonzero().flatten() * encoder.downsample
    assert (reached - 200).abs().max() <= encoder.context_frames


def test_encode_file_matches_tensor(tmp_path):
    codec = tiny_codec()
    wave = speech_like(2.5) + 0.05 * torch.randn(40_000, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "clip.wav"
    sf.write(path, wave.numpy(), 16_000, subtype="FLOAT")
    assert torch.equal(codec.encode_file(path, block_seconds=1), codec.encode(wave, 16_000))


def test_encode_file_reads_stereo_48k(tmp_path):
    codec = tiny_codec()
    stereo = speech_like(2.0, 48_000, channels=2)[0]
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo.T.numpy(), 48_000, subtype="FLOAT")
    from_file = codec.encode_file(path, block_seconds=1)
    from_tensor = codec.encode(stereo[None], 48_000)
    assert from_file.shape == from_tensor.shape == (1, 100)
    # Block edges resample with a margin, so codes match except where rounding flips a choice.
    assert (from_file == from_tensor).float().mean() > 0.9


def test_audio_blocks_cover_the_file(tmp_path):
    path = tmp_path / "long.flac"
    sf.write(path, np.zeros(16_000 * 5 + 123, dtype=np.float32), 16_000)
    blocks = list(AudioBlocks(path, block_seconds=2))
    assert [(b.start, b.stop) for b in blocks] == [(0, 32_000), (32_000, 64_000), (64_000, 80_123)]
    assert blocks[1].left == 16_000
    assert blocks[1].samples.shape[-1] == 4 * 16_000


@pytest.mark.parametrize("sample_rate", [8_000, 22_050, 48_000])
def test_any_sample_rate_is_resampled(sample_rate):
    codec = tiny_codec()
    codes = codec.encode(speech_like(1.0, sample_rate), sample_rate)
    assert codes.shape == (1, 50)


def test_stereo_is_downmixed():
    stereo = speech_like(0.5, channels=2)
    stereo[:, 1] *= 0.0
    mono = prepare_waveform(stereo, 16_000)
    assert mono.shape == (1, 8000)
    torch.testing.assert_close(mono[0], speech_like(0.5) / 2)


@pytest.mark.parametrize(
    ("waveform", "sample_rate", "message"),
    [
        (torch.zeros(0), 16_000, "at least 0.1 s"),
        (torch.zeros(1000), 16_000, "at least 0.1 s"),
        (torch.zeros(0, 16_000), 16_000, "batch of 0"),
        (torch.full((2000,), float("nan")), 16_000, "NaN"),
        (torch.zeros(2000, dtype=torch.int16), 16_000, "divide by 32768"),
        (torch.zeros(1, 1, 1, 2000), 16_000, "shaped"),
        (torch.zeros(2000), 0, "positive integer"),
        (torch.zeros(2000), 16_000.0, "positive integer"),
        ([0.0] * 2000, 16_000, None),
    ],
)
def test_bad_input_is_rejected(waveform, sample_rate, message):
    codec = tiny_codec()
    if message is None:
        with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
            codec.encode(waveform, sample_rate)
    else:
        with pytest.raises(ValueError, match=message):
            codec.encode(waveform, sample_rate)


def test_bad_codes_and_prompts_are_rejected():
    codec = tiny_codec()
    codes = codec.encode(speech_like(0.5), 16_000)
    prompt = speech_like(1.0)
    with pytest.raises(ValueError, match="needs prompt"):
        codec.decode(codes)
    with pytest.raises(ValueError, match=r"lie in \[0, 15\]"):
        codec.decode(codes + 16, prompt=prompt, prompt_sample_rate=16_000)
    with pytest.raises(ValueError, match="integer tensor"):
        codec.decode(codes.float(), prompt=prompt, prompt_sample_rate=16_000)
    with pytest.raises(ValueError, match="no frames"):
        codec.decode(codes[:, :0], prompt=prompt, prompt_sample_rate=16_000)
    with pytest.raises(ValueError, match="at least 0.1 s"):
        codec.decode(codes, prompt=prompt[:800], prompt_sample_rate=16_000)
    with pytest.raises(ValueError, match="prompt batch"):
        codec.decode(torch.cat([codes] * 3), prompt=torch.stack([prompt, prompt]), prompt_sample_rate=16_000)
    with pytest.raises(ValueError, match="prompt_sample_rate must be a positive integer"):
        codec.decode(codes, prompt=prompt, prompt_sample_rate=16_000.0)


def test_encode_rejects_path_and_block_size(tmp_path):
    codec = tiny_codec()
    with pytest.raises(TypeError, match=r"waveform is a path \('clip.wav'\).*codec.encode_file\(path\)"):
        codec.encode("clip.wav", 16_000)
    sf.write(tmp_path / "clip.wav", speech_like(0.5).numpy(), 16_000)
    with pytest.raises(ValueError, match="block_seconds must be a positive whole number of seconds, got 0"):
        codec.encode_file(tmp_path / "clip.wav", block_seconds=0)
    (tmp_path / "notes.wav").write_text("not audio")
    with pytest.raises(ValueError, match=r"could not read .*notes.wav as audio .*WAV, FLAC, OGG or MP3"):
        codec.encode_file(tmp_path / "notes.wav")


# ---- input level --------------------------------------------------------------------------------


def test_level_measure_follows_gain_and_ignores_pauses():
    speech = speech_like(1.0)
    with_pause = torch.cat([speech, torch.zeros(16_000)])[None]
    level = active_level_db(frame_power(speech[None]))

    torch.testing.assert_close(active_level_db(frame_power(with_pause)), level)
    torch.testing.assert_close(active_level_db(frame_power(0.1 * speech[None])), level - 20.0)
    assert active_level_db(frame_power(torch.zeros(1, 3200)))[0] == float("-inf")


def test_level_gain_is_bounded_and_leaves_silence():
    gains = level_gain(torch.tensor([-30.0, -100.0, float("-inf"), 30.0]), target_db=-20.0)

    torch.testing.assert_close(gains[:, 0], torch.tensor([10.0**0.5, 100.0, 1.0, 0.01]))


@pytest.mark.parametrize("level", [5.0, -150.0, float("nan"), "loud", True])
def test_invalid_input_level_rejected(level):
    with pytest.raises(ValueError, match=r"input_level_db must be a speech level in dB .* such as -20.9"):
        tiny_codec(input_level_db=level)
    with pytest.raises(ValueError, match=r"target_db must be a speech level in dB"):
        level_gain(torch.tensor([-30.0]), target_db=level)


def test_level_needs_a_whole_frame():
    with pytest.raises(ValueError, match=r"at least one 20 ms frame \(320 samples at 16 kHz\)"):
        active_level_db(frame_power(torch.zeros(1, 300)))


@pytest.mark.parametrize("block_seconds", [1, 30])
def test_codes_ignore_gain_with_input_level(tmp_path, block_seconds):
    """With `input_level_db`, quieter and louder copies of a clip give its codes, from tensors and files."""
    wave = speech_like(2.5) + 0.05 * torch.randn(40_000, generator=torch.Generator().manual_seed(1))
    plain, codec = spread_codes(tiny_codec(), wave), spread_codes(tiny_codec(input_level_db=-20.0), wave)
    reference = codec.encode(wave, 16_000, block_seconds=block_seconds)
    assert reference.unique().numel() > 3

    for gain in (0.05, 0.5, 2.0):
        assert torch.equal(codec.encode(gain * wave, 16_000, block_seconds=block_seconds), reference), gain
    sf.write(tmp_path / "quiet.wav", (0.1 * wave).numpy(), 16_000, subtype="FLOAT")
    assert torch.equal(codec.encode_file(tmp_path / "quiet.wav", block_seconds=block_seconds), reference)
    assert not torch.equal(plain.encode(0.05 * wave, 16_000), plain.encode(wave, 16_000))


def test_prompt_is_scaled_to_input_level():
    codec = tiny_codec(input_level_db=-20.0)
    prompt = speech_like(1.0)
    # Log-mel values lie in [-11.5, 9] for full-scale audio, so float32 rounding of the rescaled audio stays below 1e-3.
    quiet, normal = codec.prompt_mel(0.1 * prompt, 16_000), codec.prompt_mel(prompt, 16_000)
    torch.testing.assert_close(quiet, normal, atol=1e-3, rtol=0)
    plain = tiny_codec()
    assert (plain.prompt_mel(0.1 * prompt, 16_000) - plain.prompt_mel(prompt, 16_000)).abs().max() > 1.0


def test_windowed_vocoding_matches_one_pass():
    codec = tiny_codec()
    mel = codec.mel_frames(speech_like(2.0)[None])
    whole = codec.vocode(mel, window=10_000)
    windowed = codec.vocode(mel, window=40, context=32)
    torch.testing.assert_close(windowed, whole, atol=1e-4, rtol=0)


def test_windowed_decoding_keeps_length():
    codec = tiny_codec()
    codes = codec.encode(speech_like(3.0), 16_000)
    prompt = codec.prompt_mel(speech_like(1.0), 16_000)
    mel = codec.decode_mel(codes, prompt, window=40, context=8)
    assert mel.shape == (1, 80, codes.shape[1] * codec.downsample)
    assert torch.isfinite(mel).all()


def test_voice_conversion_depends_on_prompt():
    codec = tiny_codec()
    codes = codec.encode(speech_like(1.0), 16_000)
    low = codec.decode(codes, prompt=speech_like(1.0), prompt_sample_rate=16_000)
    high = codec.decode(codes, prompt=torch.randn(16_000) * 0.1, prompt_sample_rate=16_000)
    assert low.shape == high.shape
    assert not torch.allclose(low, high)


def test_save_and_load_round_trip(tmp_path):
    codec = tiny_codec()
    codec.save_pretrained(tmp_path / "codec")
    loaded = SpeechCodec.from_pretrained(tmp_path / "codec").eval()
    assert not any(name.startswith(("vocoder", "_")) for name in loaded.state_dict())
    wave = speech_like(1.0)
    assert torch.equal(loaded.encode(wave, 16_000), codec.encode(wave, 16_000))
    assert loaded.vocoder_name == "speech-vocoder"


def test_invalid_constructor_arguments():
    with pytest.raises(ValueError, match="100 / 2"):
        SpeechCodec(frame_rate=30)
    with pytest.raises(ValueError, match="'vq' or 'rvq'"):
        SpeechCodec(quantizer="fsq")
    with pytest.raises(ValueError, match="use quantizer='rvq'"):
        SpeechCodec(num_quantizers=2)


def test_training_forward_covers_frames_outside_prompt():
    codec = tiny_codec().train()
    clean = speech_like(0.64)[None].repeat(2, 1)
    for prompt_first in (True, False):
        output = codec(clean, clean * 0.9, prompt_frames=24, prompt_first=prompt_first, quantize=False)
        assert output.mel.shape == (2, 80, 64 - 24)
        assert output.kl > 0
        assert output.quantizer_loss == 0
    output = codec(clean, None, prompt_frames=24, prompt_first=True, quantize=True)
    assert output.kl == 0
    assert output.quantizer_loss >= 0
    with pytest.raises(ValueError, match="multiple of downsample"):
        codec(clean, None, prompt_frames=3, prompt_first=True, quantize=False)
