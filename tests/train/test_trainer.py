import pytest
import torch

from models import tiny_convnet, tiny_images
from torchslim.errors import ConfigError, ModelLoadError
from torchslim.train import TrainConfig, Trainer, augment_images
from torchslim.zoo.vision import accuracy

CONFIG = TrainConfig(epochs=3, batch_size=16, lr=0.05, checkpoint_every_steps=2, amp="off")


def _train(tmp_path, config=CONFIG, resume=False, model=None):
    model = model or tiny_convnet()
    Trainer(model, config, tiny_images(), tmp_path).fit(resume=resume)
    return model


def test_training_learns_the_synthetic_task(tmp_path):
    config = TrainConfig(epochs=15, batch_size=16, lr=0.1, amp="off", augment=False)
    model = _train(tmp_path, config)
    assert accuracy(model, *tiny_images(seed=1)) > 0.9


def test_same_seed_same_weights(tmp_path):
    a = _train(tmp_path / "a")
    b = _train(tmp_path / "b")
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_resume_after_kill_reproduces_an_uninterrupted_run(tmp_path):
    reference = _train(tmp_path / "ref")

    class Killed(Exception):
        pass

    calls = {"n": 0}

    def dying_loss(model, x, y):
        calls["n"] += 1
        if calls["n"] == 7:  # dies after the checkpoint at step 6
            raise Killed
        return torch.nn.functional.cross_entropy(model(x), y)

    killed_dir = tmp_path / "killed"
    with pytest.raises(Killed):
        Trainer(tiny_convnet(), CONFIG, tiny_images(), killed_dir, loss_fn=dying_loss).fit()
    resumed = _train(
        killed_dir, resume=True, model=tiny_convnet(seed=123)
    )  # other init: overwritten
    for (name, x), y in zip(
        reference.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(x, y), name


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no checkpoint"):
        _train(tmp_path, resume=True)


def test_checkpoint_files_are_complete(tmp_path):
    _train(tmp_path)
    names = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert names == ["model.safetensors", "optimizer.pt", "position.json"]


@pytest.mark.parametrize(
    ("field", "value"), [("epochs", 0), ("lr", -1.0), ("label_smoothing", 1.0), ("amp", "fp8")]
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value})


def test_config_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError, match='Did you mean "epochs"'):
        TrainConfig.from_dict({"epoch": 3})
    assert TrainConfig.from_dict(CONFIG.to_dict()) == CONFIG


def test_augmentation_shifts_and_flips_but_keeps_shape_and_values():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    out = augment_images(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert set(out.unique().tolist()) <= set(x.unique().tolist())  # only moved, padded with min
    assert not torch.equal(out, x)
