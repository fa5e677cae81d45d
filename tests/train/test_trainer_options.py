"""Trainer options: NaN stop keeping the last good checkpoint, eval + early stop, metrics, AdamW,
tuple inputs, trainable loss parameters."""

import json

import pytest
import torch
from torch import nn

from models import tiny_convnet, tiny_images
from torchslim.errors import TorchslimError
from torchslim.train import NonFiniteLossError, TrainConfig, Trainer, read_metrics
from torchslim.zoo.vision import accuracy

CONFIG = TrainConfig(epochs=3, batch_size=16, lr=0.05, checkpoint_every_steps=2, amp="off",
                     log_every_steps=1)  # fmt: skip


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss_fn(model, x, y):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(model(x), y)
        return loss * float("nan") if calls["n"] == 5 else loss

    model = tiny_convnet()
    trainer = Trainer(model, CONFIG, tiny_images(), tmp_path, loss_fn=loss_fn)
    with pytest.raises(
        NonFiniteLossError, match=r"loss became nan at step 5.*last good checkpoint"
    ):
        trainer.fit()
    position = json.loads((tmp_path / "checkpoint" / "position.json").read_text())
    assert position["global_step"] == 4  # the checkpoint of step 4, untouched by the bad step
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN step was not applied
    assert isinstance(NonFiniteLossError("x"), TorchslimError | FloatingPointError)
    resumed = Trainer(tiny_convnet(seed=3), CONFIG, tiny_images(), tmp_path)
    assert resumed.fit(resume=True).global_step == 12  # 3 epochs x 4 steps, from step 4


def test_eval_every_epoch_early_stop_and_metrics_file(tmp_path):
    config = TrainConfig(epochs=6, batch_size=16, lr=0.05, amp="off", patience=2,
                         eval_metric="score", eval_mode="max")  # fmt: skip
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9, 0.9])  # best at epoch 2, then 2 epochs worse

    def eval_fn(model):
        assert not model.training  # evaluated in eval mode
        return {"other": 1.0, "score": next(scores)}

    trainer = Trainer(tiny_convnet(), config, tiny_images(), tmp_path)
    state = trainer.fit(eval_fn=eval_fn)
    assert state.epoch == 4 and "early stop after epoch 4" in state.stopped
    assert state.best_metric == 0.7
    epochs = read_metrics(tmp_path / "metrics.jsonl", kind="epoch")
    assert [r["eval"]["score"] for r in epochs] == [0.5, 0.7, 0.6, 0.65]
    assert all(r["train_loss"] > 0 for r in epochs)
    assert (tmp_path / "best.safetensors").is_file()
    again = Trainer(tiny_convnet(), config, tiny_images(), tmp_path)
    assert again.fit(resume=True, eval_fn=eval_fn).epoch == 4  # a stopped run stays stopped


def test_unknown_eval_metric_is_named(tmp_path):
    config = TrainConfig(epochs=1, batch_size=32, amp="off", eval_metric="acc")
    trainer = Trainer(tiny_convnet(), config, tiny_images(), tmp_path)
    with pytest.raises(TorchslimError, match="'acc' is not among the eval results"):
        trainer.fit(eval_fn=lambda m: {"accuracy": 1.0})


def test_adamw_and_clipping_learn_the_task(tmp_path):
    config = TrainConfig(epochs=10, batch_size=16, lr=0.01, amp="off", augment=False,
                         optimizer="adamw", max_grad_norm=1.0)  # fmt: skip
    model = tiny_convnet()
    Trainer(model, config, tiny_images(), tmp_path).fit()
    assert accuracy(model, *tiny_images(seed=1)) > 0.9


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(8, 3)

    def forward(self, x, mask):
        return self.linear(x * mask)


class ScaledLoss(nn.Module):
    """A loss with a trainable parameter of its own (like a distillation adapter)."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(3))

    def forward(self, model, inputs, labels):
        return nn.functional.cross_entropy(model(*inputs) * self.scale, labels)


def test_tuple_inputs_and_loss_parameters_are_trained_and_checkpointed(tmp_path):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (48,), generator=g)
    x = torch.randn(48, 8, generator=g) + labels[:, None].float()
    data = ((x, torch.ones(48, 8)), labels)
    loss = ScaledLoss()
    trainer = Trainer(TwoInputs(), CONFIG, data, tmp_path, loss_fn=loss)
    trainer.fit()
    assert not torch.equal(loss.scale.detach(), torch.ones(3))  # the loss's parameter moved
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["loss.safetensors", "model.safetensors", "optimizer.pt", "position.json"]
    fresh_loss = ScaledLoss()
    Trainer(TwoInputs(), CONFIG, data, tmp_path, loss_fn=fresh_loss)._load_checkpoint()
    assert torch.equal(fresh_loss.scale, loss.scale)


def _mlp_run(tmp_path, accum):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (90,), generator=g)
    inputs = torch.randn(90, 16, generator=g) + labels[:, None].float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    config = TrainConfig(epochs=2, batch_size=20, lr=0.05, amp="off", augment=False,
                         grad_accum_steps=accum, log_every_steps=1)  # fmt: skip
    Trainer(model, config, (inputs, labels), tmp_path / str(accum)).fit()
    return model, [r["loss"] for r in read_metrics(tmp_path / str(accum) / "metrics.jsonl")]


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    """batch_size stays the examples per optimizer step; 3 micro-batches (7, 7, 6) of each
    step of 20 (and of the last step's 10) give the same update as one batch."""
    full, full_curve = _mlp_run(tmp_path, 1)
    accumulated, accumulated_curve = _mlp_run(tmp_path, 3)
    for (name, a), b in zip(
        full.state_dict().items(), accumulated.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)
    torch.testing.assert_close(torch.tensor(full_curve), torch.tensor(accumulated_curve))
    assert len(full_curve) == 10  # 2 epochs x ceil(90 / 20)


@pytest.mark.parametrize(("field", "value"), [("grad_accum_steps", 0), ("optimizer", "lion"),
                                              ("eval_mode", "up"), ("patience", -1)])  # fmt: skip
def test_new_config_fields_are_validated(field, value):
    with pytest.raises(TorchslimError, match=field):
        TrainConfig(**{field: value})
