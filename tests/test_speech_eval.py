"""Tests of the speech-codec evaluation: speaker probes, the speaker embedding and the harness end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vqkit.data.speech import SpeechCorpus, SpeechCorpusConfig
from vqkit.evals import speech_codec, speech_level
from vqkit.evals.speech_probe import (
    SpeakerEmbedding,
    bag_of_codes,
    frame_statistics,
    gru_probe_accuracy,
    linear_probe_accuracy,
)
from vqkit.tokenizers.speech import SpeechCodec
from vqkit.tokenizers.vocoder import ISTFTVocoder


def test_bag_of_codes_normalises_each_level():
    codes = torch.tensor([[0, 1], [0, 2], [3, 2], [0, 2]])
    bag = bag_of_codes(codes, 4)
    assert bag.shape == (8,)
    torch.testing.assert_close(bag[:4], torch.tensor([0.75, 0.0, 0.0, 0.25]))
    torch.testing.assert_close(bag[4:], torch.tensor([0.0, 0.25, 0.75, 0.0]))


def test_frame_statistics_are_mean_and_deviation():
    frames = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    torch.testing.assert_close(frame_statistics(frames), torch.tensor([2.0, 0.0, math.sqrt(2.0), 0.0]))


def _labelled_sequences(count: int, informative: bool, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Code sequences of 3 'speakers'; with `informative`, each speaker prefers its own codes."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    sequences = []
    for label in labels.tolist():
        codes = torch.randint(0, 12, (80,), generator=generator)
        if informative:
            codes[::2] = 12 + 4 * label + torch.randint(0, 4, (40,), generator=generator)
        sequences.append(codes)
    return sequences, labels


@pytest.mark.parametrize("informative", [True, False])
def test_probes_find_speaker_codes_only_when_present(informative):
    train, train_y = _labelled_sequences(60, informative, seed=0)
    test, test_y = _labelled_sequences(30, informative, seed=1)
    bags = torch.stack([bag_of_codes(s, 24) for s in train]), torch.stack([bag_of_codes(s, 24) for s in test])
    linear = linear_probe_accuracy(bags[0], train_y, bags[1], test_y)
    gru = gru_probe_accuracy(train, train_y, test, test_y, vocabulary=24, window=20, epochs=10)
    if informative:
        assert linear > 0.9
        assert gru > 0.9
    else:  # chance is 1/3
        assert linear < 0.6
        assert gru < 0.6


def test_gru_probe_reads_float_frames():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    frames = [torch.randn(60, 5, generator=generator) + 2.0 * label for label in labels.tolist()]
    assert gru_probe_accuracy(frames[:30], labels[:30], frames[30:], labels[30:], vocabulary=None, epochs=5) == 1.0


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> tuple[SpeechCorpus, str]:
    cache = tmp_path_factory.mktemp("speech-cache")
    return SpeechCorpus.build(SpeechCorpusConfig.tiny(), cache_dir=cache, progress=False), str(cache)


def test_speaker_embedding_separates_voices(tiny_corpus):
    corpus, _ = tiny_corpus
    train = corpus.utterances("train")
    embedding = SpeakerEmbedding(dims=1).fit([u.load() for u in train], [u.speaker for u in train])
    by_speaker = {}
    for item in corpus.utterances("test_seen"):
        by_speaker.setdefault(item.speaker, []).append(item.load())
    (a1, a2, *_), (b1, *_) = by_speaker.values()
    assert embedding.similarity(a1, a2) > embedding.similarity(a1, b1)
    assert embedding.similarity(a1, a1) == pytest.approx(1.0)


def test_speaker_embedding_needs_fit():
    with pytest.raises(RuntimeError, match="fit"):
        SpeakerEmbedding()(torch.zeros(16_000))


def test_conversions_bounded_by_held_out_sentences(tiny_corpus, caplog):
    """Asking for more conversions than a speaker has sentences uses them all instead of failing."""
    corpus, _ = tiny_corpus
    train = corpus.utterances("train")
    embedding = SpeakerEmbedding(dims=1).fit([u.load() for u in train], [u.speaker for u in train])
    groups = speech_codec._by_speaker(corpus.utterances("test_seen"))
    fewest = min(len(items) for items in groups.values())

    results = speech_codec.conversion_similarity(
        [speech_codec.System("unprocessed")], groups, embedding, per_speaker=fewest + 5, progress=False
    )
    assert results["unprocessed"]["pairs"] == len(groups) * fewest
    assert -1.0 <= results["unprocessed"]["to_target"] <= 1.0
    assert f"has {fewest} held-out sentences" in caplog.text


def test_gain_sensitivity_with_and_without_scaling(tiny_corpus):
    corpus, _ = tiny_corpus
    utterances = corpus.utterances("test_seen")[:3]
    torch.manual_seed(0)
    small = {"encoder_channels": 16, "decoder_dim": 16, "decoder_layers": 1, "decoder_heads": 2, "latent_dim": 4}
    codec = SpeechCodec(**small, codebook_size=16, mfcc_clusters=4, input_level_db=-20.0).eval()
    # Codes taken from the encoder means at several gains, so that gain changes the unscaled codes.
    means = []
    for gain in (0.1, 1.0, 3.0):
        clip = gain * utterances[0].load()
        mean, _ = codec.encode_mel(codec.mel_frames(clip[None, : clip.shape[-1] // 320 * 320]))
        means.append(mean[0].T)
    means = torch.cat(means)
    picks = torch.randperm(means.shape[0], generator=torch.Generator().manual_seed(0))[:16]
    codec.quantizer.codebook.set_codes(means[picks].detach())

    results = speech_level.gain_sensitivity([speech_codec.System("tiny", codec)], utterances)

    assert results["tiny"]["scaled"] == 0.0
    assert results["tiny"]["unscaled"] > 0.0
    assert results["tiny"]["clips"] == 3
    assert codec.input_level_db == -20.0


def test_level_statistics_order(tiny_corpus):
    corpus, _ = tiny_corpus
    statistics = speech_level.level_statistics(corpus.utterances("train"))

    assert statistics["utterances"] == len(corpus.utterances("train"))
    assert -60.0 < statistics["p5_db"] <= statistics["median_db"] <= statistics["p95_db"] < 0.0


@pytest.mark.slow
def test_harness_writes_report(tiny_corpus, tmp_path, monkeypatch, caplog):
    """The whole evaluation on tiny untrained models: every section is present and well formed."""
    _, cache = tiny_corpus
    monkeypatch.setenv("VQKIT_CACHE_DIR", cache)
    torch.manual_seed(0)
    small = {"encoder_channels": 16, "decoder_dim": 16, "decoder_layers": 1, "decoder_heads": 2, "latent_dim": 4}
    SpeechCodec(**small, codebook_size=16, mfcc_clusters=4).save_pretrained(tmp_path / "lscodec")
    SpeechCodec(
        **small, codebook_size=16, frame_rate=25, quantizer="rvq", num_quantizers=2, use_prompt=False
    ).save_pretrained(tmp_path / "rvq")
    ISTFTVocoder(channels=8, num_blocks=1).save_pretrained(tmp_path / "vocoder")

    argv = [
        "--codecs", str(tmp_path / "lscodec"), str(tmp_path / "rvq"), "--vocoder", str(tmp_path / "vocoder"),
        "--corpus", "tiny", "--sentences", "2", "--flite-sentences", "2", "--probe-train", "2",
        "--conversions", "2", "--out", str(tmp_path / "results"), "--no-progress",
    ]  # fmt: skip
    assert speech_codec.main(argv) == 0

    results = json.loads((tmp_path / "results" / "speech_codec.json").read_text())
    seen = results["reconstruction"]["seen"]
    assert seen["unprocessed"]["stoi"] == pytest.approx(1.0, abs=1e-6)
    assert seen[str(tmp_path / "lscodec")]["stoi"] < 0.99
    assert results["systems"][str(tmp_path / "rvq")]["bitrate"] == 25 * 2 * 4
    assert 0 < seen[str(tmp_path / "lscodec")]["entropy_bits"] <= 4
    assert results["speaker_probe"]["seen"]["chance"]["linear"] == pytest.approx(0.5)
    assert str(tmp_path / "rvq") not in results["voice_conversion"]["seen"]  # no prompt, no conversion
    assert set(results["real_time_factor"]) == {str(tmp_path / "lscodec"), str(tmp_path / "rvq")}
    markdown = (tmp_path / "results" / "speech_codec.md").read_text()
    assert "Speaker probe" in markdown
    assert "Real-time factor" in markdown
    assert (tmp_path / "results" / "speech_codec.png").stat().st_size > 1000
    level = results["input_level"]
    assert level["training"]["p5_db"] <= level["training"]["median_db"] <= level["training"]["p95_db"]
    # The tiny models have no input level, so only the unscaled fraction is measured.
    assert level["gain_sensitivity"][str(tmp_path / "lscodec")]["scaled"] is None
    assert 0.0 <= level["gain_sensitivity"][str(tmp_path / "lscodec")]["unscaled"] <= 1.0
    assert "### Input level" in markdown
    # The tiny corpus has one unseen speaker, which the harness warns about.
    assert "The unseen split has 1 speaker(s)" in caplog.text


def test_harness_rejects_too_few_sentences(capsys):
    assert speech_codec.main(["--sentences", "1"]) == 2
    assert "--sentences" in capsys.readouterr().err
