"""Tests of `vqkit train speech-codec` on the tiny corpus and tiny models."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.multiprocessing as mp

from vqkit import training
from vqkit.data.speech import SpeechCorpus, SpeechCorpusConfig
from vqkit.tokenizers import speech_train
from vqkit.tokenizers.speech import SpeechCodec
from vqkit.tokenizers.speech_train_config import CONFIGS
from vqkit.tokenizers.vocoder import ISTFTVocoder


@pytest.fixture(scope="module")
def speech_cache(tmp_path_factory) -> Path:
    """A cache folder holding the tiny speech corpus, built once."""
    folder = tmp_path_factory.mktemp("speech-cache")
    SpeechCorpus.build(SpeechCorpusConfig.tiny(), cache_dir=folder, progress=False)
    return folder


@pytest.fixture(autouse=True)
def use_speech_cache(speech_cache, monkeypatch):
    monkeypatch.setenv("VQKIT_CACHE_DIR", str(speech_cache))


def run(config_name: str, folder: Path, resume: bool = False, **changes):
    config = dataclasses.replace(CONFIGS[config_name], **changes)
    return speech_train.train(config, folder / "model", folder / "state", resume=resume, device="cpu", progress=False)


def read_metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "state" / speech_train.METRICS_FILE).read_text().splitlines()]


@pytest.fixture(scope="module")
def stage_one(speech_cache, tmp_path_factory) -> Path:
    """A tiny stage-1 ("vae") checkpoint folder."""
    folder = tmp_path_factory.mktemp("stage-one")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VQKIT_CACHE_DIR", str(speech_cache))
        run("tiny-vae", folder)
    return folder / "model"


def test_vocoder_stage_trains_and_saves(tmp_path):
    model = run("tiny-vocoder", tmp_path, steps=8, save_every=4, eval_every=4)
    assert isinstance(model, ISTFTVocoder)
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert "held_out_stft" in metrics[3]
    assert "held_out_mel_l1" in metrics[7]
    # The held-out crops are the same at every evaluation, so their loss shows learning.
    assert metrics[7]["held_out_stft"] < metrics[3]["held_out_stft"]
    loaded = ISTFTVocoder.from_pretrained(tmp_path / "model")
    assert loaded.hop_length == 160


def test_vae_stage_fits_token_targets_and_learns(stage_one):
    codec = SpeechCodec.from_pretrained(stage_one)
    assert codec.mfcc_centroids.abs().sum() > 0
    assert (codec.mfcc_std != 1).any()
    metrics = read_metrics(stage_one.parent)
    assert all(m["kl"] > 0 for m in metrics)
    assert all(m["quantizer_loss"] == 0 for m in metrics)
    assert all(m["held_out_mel_l1"] > 0 for m in metrics if "held_out_mel_l1" in m)


def test_codec_stores_the_training_level(stage_one, speech_cache):
    """The saved config contains the median speech level of the training split, which inference scales input to."""
    corpus = SpeechCorpus.build(SpeechCorpusConfig.tiny(), cache_dir=speech_cache, progress=False)
    level = speech_train.training_level_db(corpus, progress=False)
    config = json.loads((stage_one / "config.json").read_text())

    assert -40.0 < level < -5.0
    assert config["input_level_db"] == level
    assert SpeechCodec.from_pretrained(stage_one).input_level_db == level


def test_vq_stage_starts_from_stage_one(stage_one, tmp_path):
    model = run("tiny-vq", tmp_path, init_from=str(stage_one), steps=8)
    before = SpeechCodec.from_pretrained(stage_one)
    assert torch.equal(model.mfcc_centroids, before.mfcc_centroids)
    assert bool(model.quantizer.codebook.initialized)
    metrics = read_metrics(tmp_path)
    assert all(m["kl"] == 0 for m in metrics)
    assert metrics[-1]["perplexity"] > 1


def test_codebook_is_frozen_during_warm_up(stage_one, tmp_path):
    """Codes stay at their k-means values until `codebook_warmup_steps`, then EMA moves them."""
    fitted = run("tiny-vq", tmp_path / "fitted", init_from=str(stage_one), steps=2, codebook_warmup_steps=10)
    warm = run("tiny-vq", tmp_path / "warm", init_from=str(stage_one), steps=4, codebook_warmup_steps=10)
    moving = run("tiny-vq", tmp_path / "moving", init_from=str(stage_one), steps=4, codebook_warmup_steps=0)
    # All three fit k-means on the vectors of steps 1 and 2; only the last then updates the codes.
    assert torch.equal(warm.quantizer.codebook.weight, fitted.quantizer.codebook.weight)
    assert not torch.allclose(moving.quantizer.codebook.weight, fitted.quantizer.codebook.weight)


def test_rvq_baseline_trains_without_prompt(tmp_path):
    # 64 vectors per step: level 1 fits k-means at step 4, level 2 (on residuals) at step 8.
    model = run("tiny-rvq", tmp_path, steps=9)
    assert model.num_quantizers == 2
    assert not model.use_prompt
    assert all(bool(model.quantizer.codebook_at(level).initialized) for level in range(2))


def test_interrupted_run_resumes_to_same_weights(stage_one, tmp_path, monkeypatch):
    config = {"init_from": str(stage_one), "steps": 6, "save_every": 3}
    run("tiny-vq", tmp_path / "full", **config)

    class Interrupted(Exception):
        pass

    append = training.append_metrics

    def append_or_stop(metrics_file, record):
        if record["step"] == 5:
            raise Interrupted
        append(metrics_file, record)

    with monkeypatch.context() as patch:
        patch.setattr(training, "append_metrics", append_or_stop)
        with pytest.raises(Interrupted):
            run("tiny-vq", tmp_path / "resumed", **config)
    run("tiny-vq", tmp_path / "resumed", resume=True, **config)

    full = safetensors.torch.load_file(tmp_path / "full" / "model" / "model.safetensors")
    resumed = safetensors.torch.load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert sorted(full) == sorted(resumed)
    for name, tensor in full.items():
        assert torch.equal(resumed[name], tensor), name
    assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "full")


def test_second_run_without_resume_raises(stage_one, tmp_path):
    run("tiny-rvq", tmp_path, steps=2)
    with pytest.raises(FileExistsError, match="--resume"):
        run("tiny-rvq", tmp_path, steps=2)
    with pytest.raises(ValueError, match="other settings"):
        run("tiny-rvq", tmp_path, resume=True, steps=2, learning_rate=0.5)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"stage": "gan"}, "stage"),
        ({"corpus": "librispeech"}, "corpus"),
        ({"steps": 0}, "steps"),
        ({"learning_rate": float("nan")}, "learning rate"),
        ({"crop_seconds": 0.1}, "crop_seconds"),
        ({"speed_range": (0.3, 1.0)}, "speed_range"),
        ({"prompt_fraction": (0.5, 1.0)}, "prompt_fraction"),
    ],
)
def test_invalid_config_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CONFIGS["tiny-vae"], **changes).validate()


def test_cli_requires_init_from_for_vq(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        speech_train.main(["--config", "tiny-vq", "--out", str(tmp_path / "m"), "--state-dir", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "--init-from" in capsys.readouterr().err


def test_cli_rejects_mismatched_init_from(tmp_path, capsys):
    """The baseline has no prompt branch, so it cannot start a prompted 'vq' stage."""
    run("tiny-rvq", tmp_path / "rvq", steps=1)
    with pytest.raises(SystemExit) as exit_info:
        speech_train.main([
            "--config", "tiny-vq", "--init-from", str(tmp_path / "rvq" / "model"), "--out", str(tmp_path / "m"),
            "--state-dir", str(tmp_path / "s"), "--no-progress",
        ])  # fmt: skip
    assert exit_info.value.code == 2
    assert "does not match" in capsys.readouterr().err


def test_cli_rejects_missing_init_from_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        speech_train.main([
            "--config", "tiny-vq", "--init-from", str(tmp_path / "no-such-run"), "--out", str(tmp_path / "m"),
            "--state-dir", str(tmp_path / "s"), "--no-progress",
        ])  # fmt: skip
    assert exit_info.value.code == 2
    assert f"--init-from {tmp_path / 'no-such-run'} is not a folder" in capsys.readouterr().err


def test_named_configs_validate():
    for config in CONFIGS.values():
        if config.stage == "vq":
            config = dataclasses.replace(config, init_from="somewhere")
        config.validate()
    assert CONFIGS["rvq-25hz-2x512"].model["num_quantizers"] == 2


# ---- torchrun / DDP -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank: int, port: int, cache: str, out_dir: Path) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
        VQKIT_CACHE_DIR=cache,
    )  # fmt: skip
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=120))
    try:
        config = dataclasses.replace(CONFIGS["tiny-rvq"], steps=4)
        model = speech_train.train(config, out_dir / "model", out_dir / "state", device="cpu", progress=False)
        weights = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
        safetensors.torch.save_file(weights, out_dir / f"rank-{rank}.safetensors")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_stay_identical(speech_cache, tmp_path):
    """Under 2 gloo ranks the weights and codebooks end identical on both ranks."""
    mp.start_processes(
        _ddp_worker, args=(_free_port(), str(speech_cache), tmp_path), nprocs=2, start_method="spawn", join=True
    )
    first = safetensors.torch.load_file(tmp_path / "rank-0.safetensors")
    second = safetensors.torch.load_file(tmp_path / "rank-1.safetensors")
    for name, tensor in first.items():
        assert torch.equal(second[name], tensor), name
    assert (tmp_path / "model" / "model.safetensors").is_file()
