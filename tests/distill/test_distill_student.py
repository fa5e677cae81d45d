"""Students: the teacher with layers dropped (DistilBERT-style), pruned checkpoints reloaded."""

import pytest
import torch
from torch import nn

from models import tiny_convnet
from torchslim.distill import drop_layers, layer_stacks, load_reshaped
from torchslim.distill.student import parse_indices
from torchslim.errors import ConfigError, ModelLoadError
from torchslim.zoo import architectures


def test_resnet56_keeping_every_third_block_is_a_resnet20_with_teacher_weights():
    teacher = architectures.resnet56().requires_grad_(False)  # e.g. frozen by a Distiller
    student, report = drop_layers(teacher, parse_indices("1-2,4-5,7-8"))
    assert all(p.requires_grad for p in student.parameters())
    reference = architectures.resnet20().state_dict()
    state = student.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in reference.items()}
    assert torch.equal(state["layer2.1.conv1.weight"], teacher.layer2[3].conv1.weight)
    assert torch.equal(state["layer3.2.bn2.running_var"], teacher.layer3[6].bn2.running_var)
    assert report.to_dict()["layer1"] == {"layers": 9, "kept": [0, 3, 6]}
    assert len(teacher.layer1) == 9  # the teacher is untouched
    assert student(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_a_shape_changing_block_cannot_be_dropped_and_indices_are_checked():
    with pytest.raises(ConfigError, match="layer 0 of 'layer2' changes its input's shape"):
        drop_layers(architectures.resnet20(), [0])
    with pytest.raises(ConfigError, match="has only 3 layers"):
        drop_layers(architectures.resnet20(), [5])
    with pytest.raises(ConfigError, match="no stack of repeated layers"):
        drop_layers(tiny_convnet(), [1])
    with pytest.raises(ConfigError, match="expected indices"):
        parse_indices("one")


def test_bert_encoder_drops_layers_and_updates_its_config():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)  # fmt: skip
    teacher = BertModel(config, add_pooling_layer=False).eval()
    assert list(layer_stacks(teacher)) == ["encoder.layer"]
    student, _ = drop_layers(teacher, [1, 3])
    assert len(student.encoder.layer) == 2 and student.config.num_hidden_layers == 2
    assert teacher.config.num_hidden_layers == 4
    assert torch.equal(
        student.encoder.layer[1].output.dense.weight, teacher.encoder.layer[2].output.dense.weight
    )
    ids = torch.randint(0, 50, (2, 8))
    assert student(input_ids=ids).last_hidden_state.shape == (2, 8, 16)


def test_a_channel_pruned_checkpoint_loads_into_the_unpruned_architecture():
    source = tiny_convnet()
    keep = torch.tensor([0, 2])
    state = {k: v.clone() for k, v in source.state_dict().items()}
    for name in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        state[name] = state[name][keep]
    state["5.weight"] = state["5.weight"].view(3, 4, 4)[:, keep].reshape(3, 8)
    model = tiny_convnet(seed=5)
    reshaped = load_reshaped(model, state)
    assert "0.weight" in reshaped and "5.weight" in reshaped
    assert model[0].out_channels == 2 and model[1].num_features == 2 and model[5].in_features == 8
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 3)
    with pytest.raises(ModelLoadError, match="missing"):
        load_reshaped(nn.Sequential(nn.Linear(2, 2)), state)
