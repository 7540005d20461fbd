"""Language-model training (`vqkit train codebook-lm`): configurations, checkpoints, metrics,
resuming, and the registry entries of the four LM checkpoints.

Every run uses a tiny configuration (a 2-layer model, 4 steps) on the CPU. The text runs build
a 20-document corpus from Python's documentation in a temporary cache folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
from pathlib import Path

import pytest
import safetensors.torch
import torch

from vqkit import cli, commands, registry, training
from vqkit.models import lm_train
from vqkit.models.causal_lm import CausalLM
from vqkit.models.codebook_lm import CodebookLM
from vqkit.models.lm_train_config import (
    CONFIGS,
    config_from_json,
    config_to_json,
)
from vqkit.training import load_training_state

TINY_ARGS = ["--device", "cpu", "--no-progress"]


def run_main(*argv: str | Path) -> int:
    return lm_train.main([str(value) for value in argv] + TINY_ARGS)


def read_metrics(state_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (state_dir / lm_train.METRICS_FILE).read_text().splitlines()]


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(folder / "model.safetensors")


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, tensor in expected.items():
        assert torch.equal(actual[name], tensor), f"weight {name} differs"


@pytest.fixture(scope="module")
def tokfsm_base(tmp_path_factory) -> Path:
    """A checkpoint of the tiny TokFSM base stage, trained for its 4 steps."""
    root = tmp_path_factory.mktemp("tokfsm-base")
    assert run_main("--config", "tiny-tokfsm-base", "--out", root / "model", "--state-dir", root / "state") == 0
    return root / "model"


# ---- configurations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_named_configs_validate(name):
    config = CONFIGS[name]
    config.validate()
    if config.stage == "base":
        assert "model_type" in config.lm_config
    else:
        assert config.codebook["k"] <= config.codebook["codebook_size"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"task": "audio"}, "task 'audio' is not one of"),
        ({"stage": "finetune"}, "stage 'finetune' is not one of"),
        ({"lm_config": {}}, "needs lm_config with a 'model_type' entry"),
        ({"steps": 0}, "steps=0 must be at least 1"),
        ({"batch_size": 0}, "batch_size=0 must be at least 1"),
        ({"save_every": -1}, "save_every=-1 must be at least 1"),
    ],
)
def test_invalid_config_raises(changes, message):
    config = dataclasses.replace(CONFIGS["tiny-tokfsm-base"], **changes)
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_config_json_round_trip():
    config = CONFIGS["tiny-text-codebook"]
    values = json.loads(json.dumps(config_to_json(config)))

    assert config_from_json(values) == config
    assert config_from_json({**values, "retired_setting": 3}) == config


# ---- TokFSM runs ----------------------------------------------------------------------------------------


def test_base_run_writes_all_files(tokfsm_base):
    state_dir = tokfsm_base.parent / "state"
    metrics = read_metrics(state_dir)

    assert (tokfsm_base / "config.json").is_file()
    assert (tokfsm_base / "model.safetensors").is_file()
    assert (state_dir / lm_train.STATE_FILE).is_file()
    assert [record["step"] for record in metrics] == [1, 2, 3, 4]
    assert metrics[0]["lr"] == CONFIGS["tiny-tokfsm-base"].learning_rate
    for record in metrics:
        assert record["loss"] > 0
        assert record["grad_norm"] >= 0
    # Evaluations run every 2 steps.
    assert "first_transition_accuracy" not in metrics[0]
    for record in (metrics[1], metrics[3]):
        assert 0.0 <= record["first_transition_accuracy"] <= 1.0


def test_base_checkpoint_loads_as_causal_lm(tokfsm_base):
    model = CausalLM.from_pretrained(tokfsm_base)
    config = json.loads((tokfsm_base / "config.json").read_text())

    assert type(model) is CausalLM
    assert model.tokenizer is None
    assert model.vocab_size == 11
    assert config["lm_config"]["num_hidden_layers"] == 2
    with torch.no_grad():
        assert model(torch.tensor([[10, 4, 2]])).logits.shape == (1, 3, 11)


def test_training_state_records_step_and_config(tokfsm_base):
    tensors, metadata = load_training_state(tokfsm_base.parent / "state" / lm_train.STATE_FILE)

    assert metadata["step"] == 4
    assert metadata["format"] == lm_train.STATE_FORMAT
    assert config_from_json(metadata["config"]) == CONFIGS["tiny-tokfsm-base"]
    assert "rng.torch" in tensors
    assert any(name.startswith("optimizer.") for name in tensors)


def test_codebook_run_fine_tunes_base(tokfsm_base, tmp_path):
    status = run_main(
        "--config", "tiny-tokfsm-codebook", "--base", tokfsm_base, "--out", tmp_path / "model",
        "--state-dir", tmp_path / "state",
    )
    model = CodebookLM.from_pretrained(tmp_path / "model")
    metrics = read_metrics(tmp_path / "state")

    assert status == 0
    assert model.sites == ["layers.0.attn", "layers.0.mlp", "layers.1.attn", "layers.1.mlp"]
    assert model.bottleneck("layers.0.mlp").codebook_size == 16
    assert model.bottleneck("layers.0.mlp").k == 1
    assert [record["step"] for record in metrics] == [1, 2, 3, 4]
    for record in metrics:
        assert record["loss"] == pytest.approx(record["lm_loss"] + record["codebook_loss"], rel=1e-5)
        assert record["code_perplexity"] >= 1.0
        assert record["dead_codes"] >= 0
    tensors, metadata = load_training_state(tmp_path / "state" / lm_train.STATE_FILE)
    assert metadata["step"] == 4
    # The codebooks' random generators drive restarts, so the state must carry them.
    assert any(name.startswith("codebook.bottlenecks.") and name.endswith(".generator") for name in tensors)


def test_codebook_run_starts_from_base_weights(tokfsm_base, tmp_path):
    config = dataclasses.replace(CONFIGS["tiny-tokfsm-codebook"], steps=1, learning_rate=1e-12)
    model = lm_train.train(config, tmp_path / "model", tmp_path / "state", base=tokfsm_base, device="cpu", progress=False)
    base = CausalLM.from_pretrained(tokfsm_base)

    for name, tensor in base.lm.state_dict().items():
        torch.testing.assert_close(model.lm.state_dict()[name], tensor, rtol=0, atol=1e-6)


def test_frozen_lm_trains_only_codes(tokfsm_base, tmp_path):
    config = dataclasses.replace(CONFIGS["tiny-tokfsm-codebook"], steps=3, lm_learning_rate=0.0)
    model = lm_train.train(config, tmp_path / "model", tmp_path / "state", base=tokfsm_base, device="cpu", progress=False)
    base = CausalLM.from_pretrained(tokfsm_base)
    fitted = CodebookLM.from_hf(
        CausalLM.from_pretrained(tokfsm_base).lm, **{**config.codebook, "seed": config.seed}
    )

    for name, tensor in base.lm.state_dict().items():
        assert torch.equal(model.lm.state_dict()[name], tensor), name
    trained_codes = model.bottleneck("layers.0.mlp").codebooks[0].codebook.weight
    initial_codes = fitted.bottleneck("layers.0.mlp").codebooks[0].codebook.weight
    assert not torch.equal(trained_codes, initial_codes)


def test_unfrozen_lm_weights_change(tokfsm_base, tmp_path):
    config = dataclasses.replace(CONFIGS["tiny-tokfsm-codebook"], steps=3, lm_learning_rate=1e-3)
    model = lm_train.train(config, tmp_path / "model", tmp_path / "state", base=tokfsm_base, device="cpu", progress=False)
    base = CausalLM.from_pretrained(tokfsm_base)

    name = "model.layers.0.mlp.down_proj.weight"
    assert not torch.equal(model.lm.state_dict()[name], base.lm.state_dict()[name])


def test_negative_lm_learning_rate_raises():
    config = dataclasses.replace(CONFIGS["tiny-tokfsm-codebook"], lm_learning_rate=-1.0)
    with pytest.raises(ValueError, match="lm_learning_rate=-1.0"):
        config.validate()


def test_codebook_stage_without_base_fails(tmp_path, caplog):
    with pytest.raises(ValueError, match="pass --base with a base-stage checkpoint"):
        lm_train.train(CONFIGS["tiny-tokfsm-codebook"], tmp_path / "model", tmp_path / "state", device="cpu", progress=False)

    with caplog.at_level(logging.ERROR, logger=lm_train.__name__):
        status = run_main("--config", "tiny-tokfsm-codebook", "--out", tmp_path / "model", "--state-dir", tmp_path / "state")
    assert status == 2
    assert "pass --base" in caplog.text


def test_codebook_stage_with_missing_base_fails(tmp_path):
    status = run_main(
        "--config", "tiny-tokfsm-codebook", "--base", tmp_path / "no-such-model", "--out", tmp_path / "model",
        "--state-dir", tmp_path / "state",
    )
    assert status == 2


def test_second_run_without_resume_raises(tokfsm_base, tmp_path):
    state_dir = tokfsm_base.parent / "state"
    with pytest.raises(FileExistsError, match="Pass --resume"):
        lm_train.train(CONFIGS["tiny-tokfsm-base"], tmp_path / "model", state_dir, device="cpu", progress=False)
    assert run_main("--config", "tiny-tokfsm-base", "--out", tmp_path / "model", "--state-dir", state_dir) == 2


def test_resume_with_other_settings_raises(tokfsm_base, tmp_path):
    state_dir = tokfsm_base.parent / "state"
    config = dataclasses.replace(CONFIGS["tiny-tokfsm-base"], learning_rate=0.5)
    with pytest.raises(ValueError, match="learning_rate=0.5"):
        lm_train.train(config, tmp_path / "model", state_dir, resume=True, device="cpu", progress=False)


def test_resume_continues_at_saved_step(tokfsm_base, tmp_path):
    first = ["--config", "tiny-tokfsm-base", "--out", tmp_path / "model", "--state-dir", tmp_path / "state"]
    assert run_main(*first, "--steps", "2") == 0
    early = read_metrics(tmp_path / "state")

    assert run_main(*first, "--steps", "4", "--resume") == 0
    metrics = read_metrics(tmp_path / "state")

    assert [record["step"] for record in early] == [1, 2]
    assert [record["step"] for record in metrics] == [1, 2, 3, 4]
    assert metrics[:2] == early
    # With one warm-up step the schedules of a 2-step and a 4-step run agree on steps 1 and 2,
    # so the resumed run ends with the weights of the uninterrupted one.
    assert_same_weights(load_weights(tmp_path / "model"), load_weights(tokfsm_base))
    assert metrics == read_metrics(tokfsm_base.parent / "state")


class Interrupted(Exception):
    """Raised by the test in place of a process being killed."""


def interrupt_at_step(monkeypatch, step: int) -> None:
    """Make the training loop stop when it records the metrics of `step`."""
    append = training.append_metrics

    def append_or_stop(metrics_file, record):
        if record["step"] == step:
            raise Interrupted(f"stopped at step {step}")
        append(metrics_file, record)

    monkeypatch.setattr(training, "append_metrics", append_or_stop)


@pytest.mark.parametrize(
    ("config_name", "batch_size"),
    [
        ("tiny-tokfsm-base", 4),
        # 16 sequences of 17 tokens fill the 256-vector k-means pool of a 16-code codebook in step 1.
        ("tiny-tokfsm-codebook", 16),
        # 4 sequences fill only 68 of the 256 vectors per step, so the state saved at step 2
        # must carry the collected vectors into the k-means fit at step 4.
        ("tiny-tokfsm-codebook", 4),
    ],
)
def test_interrupted_run_resumes_to_same_weights(config_name, batch_size, tokfsm_base, tmp_path, monkeypatch):
    config = dataclasses.replace(CONFIGS[config_name], batch_size=batch_size)
    base = tokfsm_base if config.stage == "codebook" else None

    def run(out: Path, state: Path, resume: bool = False):
        return lm_train.train(config, out, state, base=base, resume=resume, device="cpu", progress=False)

    run(tmp_path / "full", tmp_path / "full-state")
    with monkeypatch.context() as patch:
        # The state is saved at step 2, and step 3 is recorded before the stop at step 4.
        interrupt_at_step(patch, 4)
        with pytest.raises(Interrupted):
            run(tmp_path / "resumed", tmp_path / "resumed-state")
    assert [record["step"] for record in read_metrics(tmp_path / "resumed-state")] == [1, 2, 3]

    run(tmp_path / "resumed", tmp_path / "resumed-state", resume=True)

    assert_same_weights(load_weights(tmp_path / "resumed"), load_weights(tmp_path / "full"))
    assert read_metrics(tmp_path / "resumed-state") == read_metrics(tmp_path / "full-state")


def test_resume_without_state_starts_fresh(tmp_path):
    status = run_main(
        "--config", "tiny-tokfsm-base", "--out", tmp_path / "model", "--state-dir", tmp_path / "state", "--steps", "1",
        "--resume",
    )
    assert status == 0
    assert [record["step"] for record in read_metrics(tmp_path / "state")] == [1]


# ---- text runs -----------------------------------------------------------------------------------------


def test_text_base_and_codebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("VQKIT_CACHE_DIR", str(tmp_path / "cache"))

    assert run_main("--config", "tiny-text-base", "--out", tmp_path / "base", "--state-dir", tmp_path / "base-state") == 0
    status = run_main(
        "--config", "tiny-text-codebook", "--base", tmp_path / "base", "--out", tmp_path / "codebook",
        "--state-dir", tmp_path / "codebook-state",
    )
    base = CausalLM.from_pretrained(tmp_path / "base")
    model = CodebookLM.from_pretrained(tmp_path / "codebook")

    assert status == 0
    assert (tmp_path / "base" / "tokenizer_config.json").is_file()
    assert base.tokenizer is not None
    assert len(base.tokenizer) == 300
    assert model.tokenizer is not None
    assert model.tokenizer.get_vocab() == base.tokenizer.get_vocab()
    assert model.bottleneck("layers.1.attn").k == 2
    for state_dir in (tmp_path / "base-state", tmp_path / "codebook-state"):
        metrics = read_metrics(state_dir)
        assert [record["step"] for record in metrics] == [1, 2, 3, 4]
        assert metrics[3]["validation_perplexity"] > 1.0
    with torch.no_grad():
        ids = torch.tensor([model.tokenizer("def main():")["input_ids"]])
        assert model(ids).logits.shape == (1, ids.shape[1], 300)


# ---- command line ---------------------------------------------------------------------------------------


def test_cli_default_state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status = cli.main(
        ["train", "codebook-lm", "--config", "tiny-tokfsm-base", "--out", "checkpoints/tiny", "--steps", "1", *TINY_ARGS]
    )

    assert status == 0
    assert (tmp_path / "checkpoints" / "tiny" / "model.safetensors").is_file()
    assert (tmp_path / "runs" / "tiny" / lm_train.METRICS_FILE).is_file()
    assert (tmp_path / "runs" / "tiny" / lm_train.STATE_FILE).is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", "no-such-config", "--out", "x"],
        ["--config", "tiny-tokfsm-base"],
        ["--config", "tiny-tokfsm-base", "--out", "x", "--steps", "0"],
        ["--config", "tiny-tokfsm-base", "--out", "x", "--batch-size", "two"],
    ],
)
def test_invalid_arguments_exit_2(argv):
    with pytest.raises(SystemExit) as error:
        lm_train.main(argv)
    assert error.value.code == 2


def test_command_target_is_registered():
    target = commands.get_command_target("train", "codebook-lm")
    assert target.handler == "vqkit.models.lm_train:main"


# ---- registry ------------------------------------------------------------------------------------------

LM_ENTRIES = {
    "lm-tokfsm-base": ("tokfsm-base", CausalLM),
    "codebook-lm-tokfsm-k1": ("tokfsm-codebook", CodebookLM),
    "lm-text-base": ("text-base", CausalLM),
    "codebook-lm-text-k8": ("text-codebook", CodebookLM),
}


def parse_train_command(command: str):
    words = shlex.split(command)
    assert words[:3] == ["vqkit", "train", "codebook-lm"], command
    return lm_train.build_parser().parse_args(words[3:])


@pytest.mark.parametrize("name", sorted(LM_ENTRIES))
def test_registry_entry_train_command(name):
    config_name, model_class = LM_ENTRIES[name]
    entry = registry.get_model_entry(name)
    args = parse_train_command(entry.train_command)

    assert name in registry.list_models()
    assert entry.import_class() is model_class
    assert args.config == config_name
    assert args.out == Path("checkpoints") / entry.checkpoint


@pytest.mark.parametrize("name", ["codebook-lm-tokfsm-k1", "codebook-lm-text-k8"])
def test_codebook_entry_uses_registered_base(name):
    args = parse_train_command(registry.get_model_entry(name).train_command)
    base_name = "lm-tokfsm-base" if "tokfsm" in name else "lm-text-base"
    base_entry = registry.get_model_entry(base_name)
    base_args = parse_train_command(base_entry.train_command)

    assert args.base == Path("checkpoints") / base_entry.checkpoint
    assert CONFIGS[args.config].stage == "codebook"
    assert CONFIGS[args.config].task == CONFIGS[base_args.config].task


def test_registry_codebook_settings_match_names():
    assert CONFIGS["tokfsm-codebook"].codebook["k"] == 1
    assert CONFIGS["text-codebook"].codebook["k"] == 8


# ---- invalid command lines fail before training --------------------------------------------------


def test_base_config_rejects_base_option(tokfsm_base, tmp_path, caplog):
    status = run_main("--config", "tiny-tokfsm-base", "--base", tokfsm_base, "--out", tmp_path / "model")

    assert status == 2
    assert "--base applies to codebook-stage configurations only" in caplog.text
    assert not (tmp_path / "model").exists()


def test_codebook_base_must_be_plain_model(tokfsm_base, tmp_path, caplog):
    first = run_main(
        "--config", "tiny-tokfsm-codebook", "--base", tokfsm_base, "--out", tmp_path / "codebook",
        "--state-dir", tmp_path / "codebook-state",
    )
    assert first == 0

    status = run_main(
        "--config", "tiny-tokfsm-codebook", "--base", tmp_path / "codebook", "--out", tmp_path / "again",
        "--state-dir", tmp_path / "again-state",
    )

    assert status == 2
    assert "is a codebook model" in caplog.text


def test_missing_base_folder_is_reported(tmp_path, caplog):
    status = run_main("--config", "tiny-tokfsm-codebook", "--base", tmp_path / "nowhere", "--out", tmp_path / "model")

    assert status == 2
    assert "base checkpoint not found" in caplog.text


def test_base_of_other_task_is_rejected(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("VQKIT_CACHE_DIR", str(tmp_path / "cache"))
    assert run_main("--config", "tiny-text-base", "--out", tmp_path / "text", "--state-dir", tmp_path / "text-state") == 0

    status = run_main("--config", "tiny-tokfsm-codebook", "--base", tmp_path / "text", "--out", tmp_path / "model")

    assert status == 2
    assert "the tokfsm task needs 11" in caplog.text


@pytest.mark.parametrize("learning_rate", ["0", "-1", "nan"])
def test_invalid_learning_rate_exits_2(learning_rate, tmp_path, caplog):
    status = run_main("--config", "tiny-tokfsm-base", "--lr", learning_rate, "--out", tmp_path / "model")

    assert status == 2
    assert "(--lr)" in caplog.text


def test_out_file_fails_before_training(tmp_path, caplog):
    out = tmp_path / "afile"
    out.write_text("not a folder")

    status = run_main("--config", "tiny-tokfsm-base", "--out", out, "--state-dir", tmp_path / "state")

    assert status == 2
    assert "is a file" in caplog.text
    assert not (tmp_path / "state" / lm_train.METRICS_FILE).exists()


def test_unknown_device_exits_2(tmp_path, caplog):
    status = lm_train.main(["--config", "tiny-tokfsm-base", "--out", str(tmp_path / "model"), "--device", "tpu"])

    assert status == 2
    assert "invalid device 'tpu'" in caplog.text
