"""The Distiller: layer matching by name/regex, hooks, errors, and training with the Trainer."""

import pytest
import torch
from torch import nn

from models import tiny_convnet, tiny_images
from torchslim.distill import DistillConfig, Distiller, DistillShapeError, LayerMatch
from torchslim.distill._layers import LayerMatchError
from torchslim.errors import ConfigError
from torchslim.train import NonFiniteLossError, TrainConfig, Trainer
from torchslim.zoo import architectures
from torchslim.zoo.vision import accuracy

IMAGES = torch.randn(2, 1, 28, 28)


def test_a_name_that_matches_nothing_says_which_and_suggests_one():
    config = DistillConfig(matches=(LayerMatch("layer4", "layer3"),))
    with pytest.raises(LayerMatchError, match=r"student layer 'layer4' matches no module.*"
                       r'Did you mean "layer\d"'):  # fmt: skip
        Distiller(architectures.resnet20(), architectures.resnet56(), config, IMAGES)
    config = DistillConfig(matches=(LayerMatch("layer3", r"re:stage\d"),))
    with pytest.raises(LayerMatchError, match=r"teacher layer 're:stage\\\\d' matches no module"):
        Distiller(architectures.resnet20(), architectures.resnet56(), config, IMAGES)


def test_regex_groups_pair_uniformly_and_unpairable_counts_are_refused():
    config = DistillConfig(matches=(LayerMatch(r"re:layer2\.\d", r"re:layer2\.\d"),))
    distiller = Distiller(architectures.resnet20(), architectures.resnet56(), config, IMAGES)
    assert [(p.student, p.teacher) for p in distiller.pairs] == [
        ("layer2.0", "layer2.2"), ("layer2.1", "layer2.5"), ("layer2.2", "layer2.8"),
    ]  # fmt: skip
    bad = DistillConfig(matches=(LayerMatch(r"re:layer2\.[01]", r"re:layer2\.\d"),))
    with pytest.raises(LayerMatchError, match="cannot be paired"):
        Distiller(architectures.resnet20(), architectures.resnet56(), bad, IMAGES)


def test_teacher_student_output_mismatch_is_caught_at_construction():
    with pytest.raises(DistillShapeError, match=r"student \(2, 5\), teacher \(2, 10\)"):
        Distiller(architectures.ResNet(8, num_classes=5), architectures.resnet20(), None, IMAGES)


def test_feature_matches_need_example_inputs():
    config = DistillConfig(matches=(LayerMatch("layer3", "layer3"),))
    with pytest.raises(ConfigError, match="example_inputs"):
        Distiller(architectures.resnet20(), architectures.resnet56(), config)


def test_nan_in_a_term_names_the_term():
    teacher = tiny_convnet(seed=1)
    with torch.no_grad():
        teacher[0].weight.fill_(float("nan"))
    distiller = Distiller(tiny_convnet(), teacher)
    x, y = tiny_images(8)
    with pytest.raises(NonFiniteLossError, match="'output': nan"):
        distiller(distiller.student, x, y)


def test_kd_with_feature_and_attention_matches_trains_the_student(tmp_path):
    x, y = tiny_images(128)
    teacher = tiny_convnet(seed=1)
    teacher_config = TrainConfig(epochs=10, batch_size=16, lr=0.1, amp="off", augment=False)
    Trainer(teacher, teacher_config, (x, y), tmp_path / "teacher").fit()
    teacher_weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(8, 3),
    )  # fmt: skip
    config = DistillConfig(
        temperature=2.0,
        alpha=0.5,
        matches=(LayerMatch("0", "0", "feature", 0.1), LayerMatch("1", "2", "attention_transfer")),
    )
    distiller = Distiller(student, teacher, config, x[:2])
    assert isinstance(distiller.layer_losses[0].adapter, nn.Conv2d)  # 2 -> 4 channels
    config_student = TrainConfig(epochs=10, batch_size=16, lr=0.1, amp="off", augment=False)
    trainer = Trainer(student, config_student, (x, y), tmp_path / "student", loss_fn=distiller)
    assert "layer_losses.0.adapter.weight" in trainer.loss_parameters  # trained with the student
    trainer.fit()
    assert accuracy(student, *tiny_images(seed=1)) > 0.9
    assert set(distiller.last_losses) == {"output", "feature:0", "attention_transfer:1"}
    for name, value in teacher.state_dict().items():  # the teacher never moved
        assert torch.equal(value, teacher_weights[name]), name
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert (tmp_path / "student" / "checkpoint" / "loss.safetensors").is_file()


def _bert(hidden, layers, heads):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden,
                        max_position_embeddings=32)  # fmt: skip
    return BertModel(config, add_pooling_layer=False)


def test_transformer_hidden_state_and_attention_map_distillation(tmp_path):
    teacher, student = _bert(32, 4, 4), _bert(16, 2, 2)
    ids = torch.randint(0, 100, (32, 12), generator=torch.Generator().manual_seed(0))
    config = DistillConfig(
        output_loss="none",
        matches=(
            LayerMatch(r"re:encoder\.layer\.\d", r"re:encoder\.layer\.\d", "hidden"),
            LayerMatch(r"re:.*attention\.self", r"re:.*attention\.self", "attention_map"),
        ),
    )
    distiller = Distiller(student, teacher, config, ids[:2])
    assert [p.teacher for p in distiller.pairs[:2]] == ["encoder.layer.1", "encoder.layer.3"]
    assert isinstance(distiller.layer_losses[0].adapter, nn.Linear)  # 16 -> 32
    before = float(distiller(student, ids, None).detach())
    train = TrainConfig(epochs=8, batch_size=8, lr=3e-3, optimizer="adamw", amp="off",
                        augment=False, weight_decay=0.0)  # fmt: skip
    Trainer(student, train, (ids, torch.zeros(32, dtype=torch.int64)), tmp_path, distiller).fit()
    after = float(distiller(student, ids, None).detach())
    assert after < 0.7 * before
    assert set(distiller.last_losses) == {
        "hidden:encoder.layer.0", "hidden:encoder.layer.1",
        "attention_map:encoder.layer.0.attention.self",
        "attention_map:encoder.layer.1.attention.self",
    }  # fmt: skip


def test_attention_map_on_a_module_without_query_key_is_explained():
    config = DistillConfig(output_loss="none", matches=(LayerMatch("0", "0", "attention_map"),))
    with pytest.raises(ConfigError, match="no 'query'"):
        Distiller(tiny_convnet(), tiny_convnet(), config)


def test_config_round_trip_and_match_parsing():
    match = LayerMatch.parse(r"hidden:re:encoder\.layer\.\d=re:encoder\.layer\.\d@0.5")
    assert match == LayerMatch(r"re:encoder\.layer\.\d", r"re:encoder\.layer\.\d", "hidden", 0.5)
    config = DistillConfig(temperature=2.0, matches=(match,))
    assert DistillConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match='Did you mean "temperature"'):
        DistillConfig.from_dict({"temprature": 2.0})
    with pytest.raises(ConfigError, match="expected"):
        LayerMatch.parse("layer3")
    with pytest.raises(ConfigError, match="output_loss"):
        DistillConfig(output_loss="l1")
