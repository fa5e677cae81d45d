import pytest
import torch
from torch import nn

from torchslim._io import atomic_path, load_state_dict_strict, load_tensors, save_tensors
from torchslim.errors import ModelLoadError


def test_atomic_path_leaves_nothing_when_the_block_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_until_the_new_one_is_complete(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        raise RuntimeError
    assert target.read_bytes() == b"old"


def test_safetensors_and_pt_round_trip(tmp_path):
    state = {"w": torch.randn(3, 4), "b": torch.arange(3)}
    save_tensors(tmp_path / "m.safetensors", state)
    torch.save(state, tmp_path / "m.pt")
    for name in ("m.safetensors", "m.pt"):
        loaded = load_tensors(tmp_path / name)
        assert torch.equal(loaded["w"], state["w"]) and torch.equal(loaded["b"], state["b"])


def test_corrupt_file_is_one_clear_error(tmp_path):
    for name in ("bad.safetensors", "bad.pt"):
        (tmp_path / name).write_bytes(b"\x00garbage" * 10)
        with pytest.raises(ModelLoadError, match="corrupt"):
            load_tensors(tmp_path / name)


def test_pickled_module_is_refused_by_default(tmp_path):
    torch.save(nn.Linear(2, 2), tmp_path / "module.pt")
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_tensors(tmp_path / "module.pt")


def test_missing_file(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_tensors(tmp_path / "nope.safetensors")


def test_mismatched_state_dict_names_keys_and_shapes_and_leaves_model_unchanged():
    model = nn.Linear(4, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {"weight": torch.zeros(3, 4), "extra": torch.zeros(1)}
    with pytest.raises(ModelLoadError) as info:
        load_state_dict_strict(model, bad, "ckpt")
    message = str(info.value)
    assert "missing keys ['bias']" in message
    assert "unexpected keys ['extra']" in message
    assert "(3, 4) vs model (2, 4)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    embedding = torch.randn(100, 8)
    state = {"embed.weight": embedding, "head.weight": embedding, "bias": torch.zeros(3)}
    save_tensors(tmp_path / "tied.safetensors", state)
    save_tensors(tmp_path / "untied.safetensors", {**state, "head.weight": embedding.clone()})
    tied, untied = (tmp_path / "tied.safetensors"), (tmp_path / "untied.safetensors")
    assert untied.stat().st_size - tied.stat().st_size >= 100 * 8 * 4
    loaded = load_tensors(tied)
    assert set(loaded) == set(state)
    assert torch.equal(loaded["head.weight"], embedding)
