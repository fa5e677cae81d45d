from pathlib import Path

import pytest
import torch
import user_factories
from safetensors.torch import save_file

from torchslim import zoo
from torchslim.errors import (
    ConfigError,
    InputShapeError,
    ModelLoadError,
    TorchslimError,
    UnknownModelError,
)
from torchslim.zoo.options import ModelOptions
from torchslim.zoo.user import check_inputs
from torchslim.zoo.user import resolve as resolve_with

SHAPE = (1, 3, 8, 8)


def resolve(spec, weights=None, input_shape=None, **options):
    path = Path(weights) if weights is not None else None
    return resolve_with(spec, ModelOptions(path, input_shape, **options))


def is_identical(metrics: dict[str, float]) -> bool:
    """Fidelity of the original model to itself."""
    return (
        metrics["output_finite"] == 1.0
        and metrics["cosine"] == pytest.approx(1.0)
        and metrics["max_abs_error"] == 0.0
        and metrics["top1_agreement"] == 1.0
        and metrics["kl_divergence"] == pytest.approx(0.0, abs=1e-12)
    )


@pytest.fixture(autouse=True)
def factories_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))


def seeded_convnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return user_factories.small_convnet().eval()


# --- package.module:factory --------------------------------------------------------------------


def test_factory_spec_gives_a_seeded_model_and_seeded_inputs():
    entry = resolve("user_factories:small_convnet", input_shape=SHAPE)
    first, second = entry.load(), entry.load()
    assert torch.equal(first[0].weight, second[0].weight)
    (inputs,) = entry.example_inputs(4)
    assert inputs.shape == (4, 3, 8, 8) and inputs.dtype == torch.float32
    assert torch.equal(inputs, entry.example_inputs(4)[0])
    calibration = entry.calibration_batches(2, batch_size=4)
    assert not torch.equal(calibration[0][0], inputs)
    assert check_inputs(entry, first, batch_size=4).shape == (4, 2)
    assert is_identical(entry.evaluate(first))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_factory_weights_are_loaded(tmp_path, suffix):
    trained = seeded_convnet(7)
    path = tmp_path / f"model{suffix}"
    state = {k: v.contiguous() for k, v in trained.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    entry = resolve("user_factories:small_convnet", weights=str(path), input_shape=SHAPE)
    model = entry.load()
    (inputs,) = entry.example_inputs(2)
    assert torch.equal(model(inputs), trained(inputs))


def test_evaluate_flags_non_finite_outputs():
    entry = resolve("user_factories:small_convnet", input_shape=SHAPE)
    model = entry.load()
    with torch.no_grad():
        model[-1].bias.fill_(float("nan"))
    assert entry.evaluate(model)["output_finite"] == 0.0


# --- Hugging Face directory -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-vit"])
def test_huggingface_directory_keeps_weights_head_and_derives_inputs(tmp_path, name):
    original = zoo.get(name).load()
    original.model.save_pretrained(tmp_path / name)
    entry = resolve(str(tmp_path / name))
    model = entry.load()
    (inputs,) = entry.example_inputs(2)
    if name == "tiny-gpt2":  # token ids up to the vocabulary, a default sequence length
        assert inputs.dtype == torch.int64 and inputs.shape == (2, 32)
        assert int(inputs.max()) < 1000
    else:  # pixels from the config's image_size and num_channels
        assert inputs.shape == (2, 3, 32, 32)
    output = check_inputs(entry, model, batch_size=2)
    assert isinstance(output, torch.Tensor)
    assert torch.equal(output, original(inputs))  # same weights, same head (logits)
    assert is_identical(entry.evaluate(model))


def test_huggingface_text_model_takes_its_sequence_length_from_input_shape(tmp_path):
    zoo.get("tiny-bert").load().model.save_pretrained(tmp_path / "bert")
    entry = resolve(str(tmp_path / "bert"), input_shape=(1, 12))
    assert entry.example_inputs(3)[0].shape == (3, 12)
    assert check_inputs(entry, entry.load(), 3).shape == (3, 12, 32)


# --- torch.export .pt2 ------------------------------------------------------------------------


def export(tmp_path, dynamic: bool) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    model, inputs = seeded_convnet(3), torch.randn(2, 3, 8, 8)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (inputs,), dynamic_shapes=shapes), path)
    return path, model, inputs


def test_static_pt2_uses_its_saved_inputs_and_only_its_batch_size(tmp_path):
    path, original, saved = export(tmp_path, dynamic=False)
    entry = resolve(str(path))
    assert entry.default_batch_size == 2
    (inputs,) = entry.example_inputs(2)
    assert torch.equal(inputs, saved)
    model = entry.load()
    assert torch.allclose(check_inputs(entry, model, 2), original(saved), atol=1e-6)
    assert is_identical(entry.evaluate(model))
    assert entry.calibration_batches(1)[0][0].shape == (2, 3, 8, 8)
    with pytest.raises(InputShapeError, match=r"static batch size of 2.*Dim\('batch'\)"):
        entry.example_inputs(5)


def test_dynamic_pt2_accepts_any_batch(tmp_path):
    path, _, saved = export(tmp_path, dynamic=True)
    entry = resolve(str(path))
    (inputs,) = entry.example_inputs(5)
    assert torch.equal(inputs[:2], saved) and torch.equal(inputs[2:4], saved)  # tiled
    assert check_inputs(entry, entry.load(), 5).shape == (5, 2)
    calibration = entry.calibration_batches(1, batch_size=3)[0][0]
    assert calibration.shape == (3, 3, 8, 8) and not torch.equal(calibration[:2], saved)


def test_pt2_loads_give_fresh_weights(tmp_path):
    path, _, _ = export(tmp_path, dynamic=False)
    entry = resolve(str(path))
    first = entry.load()
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.zero_()
    assert any(parameter.abs().sum() > 0 for parameter in entry.load().parameters())


# --- errors -----------------------------------------------------------------------------------


def test_factory_module_that_does_not_import_is_named():
    with pytest.raises(ModelLoadError, match=r"no_such_module_xyz.*ModuleNotFoundError"):
        resolve("no_such_module_xyz:build", input_shape=SHAPE)


def test_factory_module_that_fails_while_importing_shows_the_python_error(tmp_path, monkeypatch):
    (tmp_path / "broken_factories.py").write_text("def build(:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelLoadError, match=r"broken_factories.*SyntaxError"):
        resolve("broken_factories:build", input_shape=SHAPE)


def test_missing_factory_suggests_the_closest_callable():
    with pytest.raises(ModelLoadError, match=r'no attribute .small_convnett.*"small_convnet"'):
        resolve("user_factories:small_convnett", input_shape=SHAPE)


def test_malformed_factory_spec_shows_the_expected_form():
    with pytest.raises(ModelLoadError, match=r"package\.module:factory"):
        resolve("user factories:small convnet", input_shape=SHAPE)


@pytest.mark.parametrize(
    ("factory", "message"),
    [("not_a_module", "returned dict, not a torch.nn.Module"), ("needs_arguments", "TypeError")],
)
def test_factory_that_does_not_build_a_module_is_refused(factory, message):
    entry = resolve(f"user_factories:{factory}", input_shape=SHAPE)
    with pytest.raises(ModelLoadError, match=message):
        entry.load()


def test_factory_without_input_shape_asks_for_it():
    with pytest.raises(ConfigError, match="--input-shape"):
        resolve("user_factories:small_convnet")


def test_bad_input_shape_values_are_a_config_error():
    with pytest.raises(ConfigError, match="positive integers"):
        resolve("user_factories:small_convnet", input_shape=(1, 0, 8))


def test_corrupt_weights_file_is_a_model_load_error(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not a safetensors file")
    entry = resolve("user_factories:small_convnet", weights=str(path), input_shape=SHAPE)
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        entry.load()


def test_mismatched_weights_name_the_keys(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(user_factories.other_convnet().state_dict(), str(path))
    entry = resolve("user_factories:small_convnet", weights=str(path), input_shape=SHAPE)
    with pytest.raises(ModelLoadError, match=r"do not fit the model.*0\.weight"):
        entry.load()


def test_missing_weights_file_fails_at_resolve(tmp_path):
    with pytest.raises(ModelLoadError, match="no such file"):
        resolve("user_factories:small_convnet", str(tmp_path / "nope.pt"), SHAPE)


def test_rejected_input_shape_names_the_shape_and_the_model_error():
    entry = resolve("user_factories:small_convnet", input_shape=(1, 1, 8, 8))
    model = entry.load()
    with pytest.raises(InputShapeError, match=r"\(2, 1, 8, 8\) float32: RuntimeError"):
        check_inputs(entry, model, batch_size=2)
    with pytest.raises(InputShapeError, match="--input-shape"):
        entry.evaluate(model)


def test_corrupt_pt2_and_weights_for_a_pt2_are_refused(tmp_path):
    (tmp_path / "bad.pt2").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=r"cannot load .*bad\.pt2 as a torch.export program"):
        resolve(str(tmp_path / "bad.pt2"))
    (tmp_path / "w.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"--weights cannot be used with .*its own weights"):
        resolve(str(tmp_path / "bad.pt2"), weights=str(tmp_path / "w.safetensors"))


def test_unknown_spec_lists_the_accepted_forms(tmp_path):
    with pytest.raises(UnknownModelError, match=r"package\.module:factory"):
        resolve("resnet-9000")
    with pytest.raises(ModelLoadError, match=r"without config\.json"):
        resolve(str(tmp_path))


def test_failures_leave_no_files_behind(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"x")
    before = sorted(tmp_path.rglob("*"))
    attempts = [
        lambda: resolve(
            "user_factories:small_convnet", str(tmp_path / "bad.safetensors"), SHAPE
        ).load(),
        lambda: resolve(str(tmp_path / "missing.pt2")),
        lambda: resolve(str(tmp_path)),
    ]
    for attempt in attempts:
        with pytest.raises(TorchslimError):
            attempt()
    assert sorted(tmp_path.rglob("*")) == before
