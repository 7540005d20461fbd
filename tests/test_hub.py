"""Checkpoint saving and loading (vqkit.hub) and the model registry (vqkit.registry)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest
import safetensors.torch
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError
from torch import nn

import vqkit
from vqkit import hub, registry
from vqkit.hub import VQKitModelMixin


class TinyCodec(nn.Module, VQKitModelMixin):
    """A codebook and a projection: enough structure to check a checkpoint round trip."""

    def __init__(self, dim: int = 4, codebook_size: int = 8):
        super().__init__()
        self.dim = dim
        self.codebook_size = codebook_size
        self.codebook = nn.Embedding(codebook_size, dim)
        self.project = nn.Linear(dim, dim)


class OtherModel(nn.Module, VQKitModelMixin):
    def __init__(self, width: int = 2):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width))


TINY_CODEC_SPEC = f"{TinyCodec.__module__}:TinyCodec"


def make_codec(seed: int, **kwargs) -> TinyCodec:
    torch.manual_seed(seed)
    return TinyCodec(**kwargs)


def assert_same_weights(expected: nn.Module, actual: nn.Module) -> None:
    expected_state = expected.state_dict()
    actual_state = actual.state_dict()
    assert actual_state.keys() == expected_state.keys()
    for name, tensor in expected_state.items():
        assert torch.equal(actual_state[name], tensor), f"weights differ in {name}"


def snapshot_folder(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture
def shipped_checkpoints(tmp_path, monkeypatch):
    """Point the registry's checkpoints root at a temporary folder and undo test registrations."""
    root = tmp_path / "checkpoints"
    root.mkdir()
    monkeypatch.setattr(registry, "checkpoints_root", lambda: root)
    registered_before = set(registry.list_models())
    yield root
    for name in set(registry.list_models()) - registered_before:
        registry.unregister_model(name)


def test_round_trip_restores_weights_and_config(tmp_path):
    model = make_codec(0, dim=6, codebook_size=16)
    folder = tmp_path / "codec"

    model.save_pretrained(folder)
    loaded = TinyCodec.from_pretrained(folder)

    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((folder / "config.json").read_text()) == {"codebook_size": 16, "dim": 6}
    assert loaded.dim == 6
    assert loaded.codebook_size == 16
    assert_same_weights(model, loaded)
    assert not loaded.training


def test_round_trip_accepts_string_path_and_device(tmp_path):
    model = make_codec(1)
    model.save_pretrained(str(tmp_path / "codec"))

    loaded = TinyCodec.from_pretrained(str(tmp_path / "codec"), map_location=torch.device("cpu"))

    assert_same_weights(model, loaded)
    assert loaded.codebook.weight.device == torch.device("cpu")


def test_save_replaces_previous_checkpoint(tmp_path):
    folder = tmp_path / "codec"
    make_codec(0).save_pretrained(folder)
    newer = make_codec(1, dim=5)

    newer.save_pretrained(folder)

    assert_same_weights(newer, TinyCodec.from_pretrained(folder))
    assert os.listdir(tmp_path) == ["codec"]


def test_save_keeps_existing_model_card(tmp_path):
    folder = tmp_path / "codec"
    make_codec(0).save_pretrained(folder)
    (folder / "README.md").write_text("# Hand-written card\n")

    make_codec(1).save_pretrained(folder)

    assert (folder / "README.md").read_text() == "# Hand-written card\n"


def test_failed_write_leaves_old_checkpoint_intact(tmp_path, monkeypatch):
    folder = tmp_path / "codec"
    old_model = make_codec(0)
    old_model.save_pretrained(folder)
    old_files = snapshot_folder(folder)

    def write_half_then_fail(model, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x00" * 64)
        raise OSError("simulated disk full")

    # huggingface_hub imports save_model from safetensors.torch each time it saves.
    monkeypatch.setattr(safetensors.torch, "save_model", write_half_then_fail)
    with pytest.raises(OSError, match="simulated disk full"):
        make_codec(1).save_pretrained(folder)
    monkeypatch.undo()

    assert snapshot_folder(folder) == old_files
    assert os.listdir(tmp_path) == ["codec"], "the temporary folder was not removed"
    assert_same_weights(old_model, TinyCodec.from_pretrained(folder))


def test_failed_swap_restores_old_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "codec"
    old_model = make_codec(0)
    old_model.save_pretrained(folder)
    old_files = snapshot_folder(folder)
    real_rename = os.rename
    renames = []

    def fail_second_rename(source, destination):
        renames.append((Path(source).name, Path(destination).name))
        if len(renames) == 2:
            raise OSError("simulated failure while renaming the new checkpoint into place")
        real_rename(source, destination)

    monkeypatch.setattr(hub.os, "rename", fail_second_rename)
    with pytest.raises(OSError, match="simulated failure"):
        make_codec(1).save_pretrained(folder)
    monkeypatch.undo()

    assert renames[0][0] == "codec", "the old checkpoint was not moved aside first"
    assert snapshot_folder(folder) == old_files
    assert os.listdir(tmp_path) == ["codec"]


def test_save_rejects_folder_with_other_files(tmp_path):
    folder = tmp_path / "experiment"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")

    with pytest.raises(ValueError, match="notes.txt"):
        make_codec(0).save_pretrained(folder)

    assert os.listdir(folder) == ["notes.txt"]
    assert os.listdir(tmp_path) == ["experiment"]


def test_save_rejects_file_path(tmp_path):
    path = tmp_path / "model.bin"
    path.write_text("not a folder")

    with pytest.raises(ValueError, match="is a file"):
        make_codec(0).save_pretrained(path)


def test_load_rejects_missing_and_unexpected_weights(tmp_path):
    folder = tmp_path / "codec"
    make_codec(0).save_pretrained(folder)
    state = safetensors.torch.load_file(folder / "model.safetensors")
    state["extra.weight"] = torch.zeros(1)
    safetensors.torch.save_file(state, folder / "model.safetensors")

    with pytest.raises(RuntimeError, match="extra.weight"):
        TinyCodec.from_pretrained(folder)


def test_load_without_safetensors_never_unpickles(tmp_path, monkeypatch):
    folder = tmp_path / "codec"
    make_codec(0).save_pretrained(folder)
    weights = safetensors.torch.load_file(folder / "model.safetensors")
    torch.save(weights, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()

    def fail_on_unpickle(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", fail_on_unpickle)
    with pytest.raises(FileNotFoundError) as raised:
        TinyCodec.from_pretrained(folder)

    message = str(raised.value)
    assert "model.safetensors not found" in message
    assert "pytorch_model.bin" in message
    assert "pickle" in message


def test_hub_repo_without_safetensors_never_unpickles(monkeypatch):
    requested_files = []

    def fake_download(repo_id, filename, **kwargs):
        requested_files.append(filename)
        response = httpx.Response(404, request=httpx.Request("GET", "http://127.0.0.1/unused"))
        raise RemoteEntryNotFoundError(f"{filename} not found", response=response)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    monkeypatch.setattr("huggingface_hub.hub_mixin.hf_hub_download", fake_download)

    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        TinyCodec.from_pretrained("someone/tiny-codec")
    assert "pytorch_model.bin" not in requested_files


@pytest.mark.parametrize("device", ["not-a-device", "cuda:0"])
def test_load_rejects_unusable_device(tmp_path, device):
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("CUDA is available, so this device is usable")
    make_codec(0).save_pretrained(tmp_path / "codec")

    with pytest.raises(ValueError, match=repr(device)):
        TinyCodec.from_pretrained(tmp_path / "codec", map_location=device)


def test_registered_name_loads_shipped_checkpoint(shipped_checkpoints):
    model = make_codec(2, dim=3)
    model.save_pretrained(shipped_checkpoints / "tiny-codec")
    registry.register_model("tiny-codec-test", TINY_CODEC_SPEC, "tiny-codec", "Test codec")

    from_class = TinyCodec.from_pretrained("tiny-codec-test")
    from_package = vqkit.load("tiny-codec-test", device="cpu")

    assert "tiny-codec-test" in vqkit.list_models()
    assert_same_weights(model, from_class)
    assert_same_weights(model, from_package)
    assert isinstance(from_package, TinyCodec)
    assert from_package.dim == 3


def test_registered_name_rejects_other_class(shipped_checkpoints):
    make_codec(0).save_pretrained(shipped_checkpoints / "tiny-codec")
    registry.register_model("tiny-codec-test", TINY_CODEC_SPEC, "tiny-codec", "Test codec")

    with pytest.raises(ValueError, match=r"vqkit\.load\('tiny-codec-test'\)"):
        OtherModel.from_pretrained("tiny-codec-test")


def test_load_reports_missing_checkpoint_folder(shipped_checkpoints):
    registry.register_model("tiny-codec-test", TINY_CODEC_SPEC, "absent-folder", "Test codec")

    with pytest.raises(FileNotFoundError, match="absent-folder"):
        vqkit.load("tiny-codec-test")


def test_unknown_name_lists_known_names(shipped_checkpoints):
    registry.register_model("tiny-codec-test", TINY_CODEC_SPEC, "tiny-codec", "Test codec")

    with pytest.raises(ValueError) as raised:
        vqkit.load("no-such-model")

    message = str(raised.value)
    assert "'no-such-model'" in message
    assert "tiny-codec-test" in message
    assert "vqkit list" in message


def test_register_model_rejects_conflicting_entry(shipped_checkpoints):
    registry.register_model("tiny-codec-test", TINY_CODEC_SPEC, "tiny-codec", "Test codec")
    registry.register_model("tiny-codec-test", TINY_CODEC_SPEC, "tiny-codec", "Test codec")

    with pytest.raises(ValueError, match="already registered"):
        registry.register_model("tiny-codec-test", TINY_CODEC_SPEC, "other-folder", "Test codec")
    registry.register_model("tiny-codec-test", TINY_CODEC_SPEC, "other-folder", "Test codec", replace=True)
    assert registry.get_model_entry("tiny-codec-test").checkpoint == "other-folder"


@pytest.mark.parametrize(
    ("name", "model_class", "checkpoint", "description", "expected_message"),
    [
        ("owner/model", TINY_CODEC_SPEC, "tiny", "Test", "invalid model name 'owner/model'"),
        ("Tiny", TINY_CODEC_SPEC, "tiny", "Test", "invalid model name 'Tiny'"),
        ("tiny", "tests.test_hub.TinyCodec", "tiny", "Test", "invalid model class"),
        ("tiny", TINY_CODEC_SPEC, "../outside", "Test", "invalid checkpoint folder '../outside'"),
        ("tiny", TINY_CODEC_SPEC, "/abs/path", "Test", "invalid checkpoint folder '/abs/path'"),
        ("tiny", TINY_CODEC_SPEC, "tiny", "", "invalid description"),
    ],
)
def test_register_model_rejects_invalid_values(name, model_class, checkpoint, description, expected_message):
    with pytest.raises(ValueError, match=expected_message.replace(".", r"\.")):
        registry.register_model(name, model_class, checkpoint, description)
    assert name not in registry.list_models()


def test_checkpoints_root_contains_readme():
    root = registry.checkpoints_root()

    assert root.name == "checkpoints"
    assert (root / "README.md").is_file()


def test_saved_files_follow_umask(tmp_path):
    old_umask = os.umask(0o022)
    try:
        TinyCodec().save_pretrained(tmp_path / "ckpt")
    finally:
        os.umask(old_umask)
    for name in ("config.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode) == 0o644, name


@pytest.mark.parametrize("name", ["missing/deeper/folder", "./missing", "/no/such/checkpoint", "~/no-such-vqkit-folder"])
def test_missing_local_folder_is_reported_as_such(name, tmp_path, monkeypatch):
    """A path that cannot be a Hub repo id gives FileNotFoundError, not a repo-id error from huggingface_hub."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TinyCodec.from_pretrained(name)


def test_unknown_bare_name_lists_registered_models(tmp_path, monkeypatch):
    """A bare word that is neither registered nor a folder fails at once, without asking the Hub."""
    monkeypatch.chdir(tmp_path)

    def no_download(*args, **kwargs):
        raise AssertionError("the Hub must not be asked for a bare name")

    monkeypatch.setattr(hub, "hf_hub_download", no_download)
    monkeypatch.setattr("huggingface_hub.hub_mixin.hf_hub_download", no_download)
    with pytest.raises(FileNotFoundError, match="'speech-lscodec-10hz' is not a registered model name") as error:
        TinyCodec.from_pretrained("speech-lscodec-10hz")
    assert "speech-lscodec-50hz" in str(error.value)


@pytest.mark.parametrize("name", ["models/no-such-model", "checkpoints/no-such-model", "runs/no-such-run"])
def test_missing_folder_under_existing_folder_is_local(name, tmp_path, monkeypatch):
    """A path "folder/name" is local, not a Hub repo id, when "folder" exists here."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / name.split("/")[0]).mkdir()
    with pytest.raises(FileNotFoundError, match=f"checkpoint folder {name} does not exist"):
        TinyCodec.from_pretrained(name)


@pytest.mark.parametrize("name", ["checkpoints/no-such-model", "runs/no-such-run"])
def test_vqkit_output_folders_are_local_anywhere(name, tmp_path, monkeypatch):
    """Names under checkpoints/ and runs/ never go to the Hub, even where those folders are absent."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=f"checkpoint folder {name} does not exist"):
        TinyCodec.from_pretrained(name)


def test_unreachable_hub_repo_reported_as_missing_folder(monkeypatch, tmp_path):
    """Offline, an "owner/name" that is not a folder here fails with a message that names both places tried."""
    monkeypatch.chdir(tmp_path)

    def offline_download(repo_id, filename, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic is off.")

    monkeypatch.setattr(hub, "hf_hub_download", offline_download)
    monkeypatch.setattr("huggingface_hub.hub_mixin.hf_hub_download", offline_download)
    with pytest.raises(FileNotFoundError, match=r"'someone/tiny-codec' is not a folder under .*could not be fetched"):
        TinyCodec.from_pretrained("someone/tiny-codec")
