"""cluster_ with groups: the layers of a group share one codebook Parameter (at most 2^bits
distinct non-zero values across them, its gradient summed over all of them), pack stores it
once and reads it back bit for bit, bad groups are refused with the model untouched; the
``cluster`` step takes ``groups`` from a YAML recipe run by the CLI."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import torchslim
from torchslim import zoo
from torchslim.cli import app
from torchslim.errors import ConfigError
from torchslim.pack import PackConfig, pack_model, unpack_state
from torchslim.pack.format import encode_state as pack_model_state
from torchslim.prune.finetune import FinetuneConfig, finetune_
from torchslim.prune.unstructured import apply_masks_, folded_copy
from torchslim.share import ClusterConfig, ClusteredWeight, cluster_, codebook_groups

CONVS = "re:conv_layers\\..*"  # mnist-cnn's three convs; its last Linear keeps its own codebook


def bits_of(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().contiguous().reshape(-1).view(torch.int32)


def nonzero_values(model: nn.Module, names: list[str]) -> set[float]:
    weights = [dict(model.named_modules())[n].weight for n in names]
    return {float(v) for w in weights for v in w.detach()[w.detach() != 0].unique()}


def test_a_group_shares_one_codebook_and_its_summed_gradient() -> None:
    model = zoo.get("tiny-cnn").load()
    convs = ["features.0.0", "features.1.0", "features.3.0", "features.4.0"]
    result = cluster_(model, ClusterConfig(bits=3, groups=("re:features\\..*",)))
    assert result.groups == {"re:features\\..*": convs}
    assert result.summary()["codebooks"] == 3  # the conv group, classifier.2, classifier.4
    parametrizations = [dict(model.named_modules())[n].parametrizations["weight"][0] for n in convs]
    assert all(isinstance(p, ClusteredWeight) for p in parametrizations)
    assert len({id(p.codebook) for p in parametrizations}) == 1
    assert len([p for p in model.parameters() if p.dim() == 1 and p.numel() == 8]) >= 1
    assert codebook_groups(model) == [[f"{n}.weight" for n in convs]]
    assert len(nonzero_values(folded_copy(model), convs)) <= 8
    # every layer's upstream gradient lands on the one shared codebook, summed
    upstream = {n: torch.randn_like(dict(model.named_modules())[n].weight) for n in convs}
    loss = sum((dict(model.named_modules())[n].weight * upstream[n]).sum() for n in convs)
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    grad = parametrizations[0].codebook.grad
    assert grad is not None
    for k in range(8):
        expected = sum(
            upstream[n][(p.codes.long() == k) & p.keep].sum()
            for n, p in zip(convs, parametrizations, strict=True)
        )
        torch.testing.assert_close(grad[k], torch.as_tensor(expected), rtol=1e-5, atol=1e-5)


def test_pack_stores_a_group_codebook_once_and_loads_back_bit_for_bit(tmp_path: Path) -> None:
    entry = zoo.get("mnist-cnn")
    model = entry.load()
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    apply_masks_(model, {n: m.weight.abs() > m.weight.abs().median() for n, m in convs.items()})
    cluster_(model, ClusterConfig(bits=4, targets=(CONVS, "fc_layers.2"), groups=(CONVS,)))
    tune = FinetuneConfig(epochs=1, samples=256, lr=0.005, batch_size=64, augment=False)
    finetune_(entry, model, tune)  # trains the shared centroids: still one codebook after
    groups = codebook_groups(model)
    assert groups == [["conv_layers.0.weight", "conv_layers.3.weight", "conv_layers.6.weight"]]
    folded = folded_copy(model)
    assert len(nonzero_values(folded, ["conv_layers.0", "conv_layers.3", "conv_layers.6"])) <= 16
    shared = pack_model(folded, tmp_path / "shared.packed", PackConfig(), groups)
    alone = pack_model(folded, tmp_path / "alone.packed", PackConfig())
    (book,) = shared.codebooks
    assert book["tensors"] == groups[0] and book["entries"] <= 16
    assert book["bytes"] == 4 * book["entries"]  # float32 bit patterns, counted once
    referencing = [r for r in shared.tensors if "codebook_ref" in r]
    assert {r["name"] for r in referencing} == set(groups[0])
    for record in referencing:  # no codebook of its own: its bytes are its streams only
        assert record["bytes"] == sum(s["bytes"] for s in record["streams"])
    assert sum(shared.layers.values()) + book["bytes"] <= shared.bytes < alone.bytes
    for path in (tmp_path / "shared.packed", tmp_path / "alone.packed"):
        state = unpack_state(path)
        assert all(torch.equal(bits_of(v), bits_of(folded.state_dict()[k]))
                   for k, v in state.items() if v.is_floating_point())  # fmt: skip


@pytest.mark.parametrize(
    ("groups", "bits", "message"),
    [
        (("re:classifier\\..*",), 4, "matches no clustered layer"),
        (("re:features\\..*", "re:features\\.0\\..*"), 4, "in two groups"),
        (("re:features\\.0\\..*",), 7, r"codebook of 128 entries \(bits=7\) for group"),
    ],
)
def test_a_bad_group_is_refused_and_the_model_untouched(
    groups: tuple[str, ...], bits: int, message: str
) -> None:
    model = zoo.get("tiny-cnn").load()  # features.0.0 has 72 weights
    before = copy.deepcopy(model)
    with pytest.raises(ConfigError, match=message):
        cluster_(model, ClusterConfig(bits=bits, targets=("re:features\\..*",), groups=groups))
    assert str(model) == str(before)
    pairs = zip(model.state_dict().items(), before.state_dict().items(), strict=True)
    assert all(a[0] == b[0] and torch.equal(a[1], b[1]) for a, b in pairs)
    with pytest.raises(ConfigError, match="distinct"):
        ClusterConfig(groups=("re:a", "re:a"))


def test_pack_refuses_a_group_of_more_values_than_a_codebook_holds() -> None:
    state = {"a": torch.randn(300), "b": torch.randn(300)}
    with pytest.raises(ConfigError, match="distinct values"):
        pack_model_state(state, codebook_groups=[["a", "b"]])
    with pytest.raises(ConfigError, match="not in the state dict"):
        pack_model_state(state, codebook_groups=[["a", "c"]])


def test_the_cli_runs_a_recipe_with_a_group_codebook_and_loads_it(tmp_path: Path) -> None:
    recipe = tmp_path / "groups.yaml"
    recipe.write_text(
        "version: 1\nstages:\n"
        "  - step: prune\n    method: magnitude\n    target: sparsity=0.7\n"
        "  - step: cluster\n    bits: 3\n    groups: ['re:features\\..*']\n"
        "  - step: pack\n"
    )
    out = tmp_path / "out"
    command = ["compress", "tiny-cnn", "--recipe", str(recipe), "--out", str(out), "--json",
               "--repeats", "3"]  # fmt: skip
    ran = CliRunner().invoke(app, command)
    assert ran.exit_code == 0, ran.output
    manifest = json.loads((out / "manifest.json").read_text())
    text = json.dumps(manifest)
    assert '"shared_codebooks"' in text and "features.4.0.weight" in text
    model = torchslim.load(out)
    convs = ["features.0.0", "features.1.0", "features.3.0", "features.4.0"]
    assert len(nonzero_values(model, convs)) <= 8
    assert len(nonzero_values(model, ["classifier.2"])) <= 8
