"""deploy: layers kept in fp32 (``DeployConfig.ignore``) and the budgeted race."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from cpu_kinds import ZEN2
from torchslim import zoo
from torchslim.deploy import DeployConfig, DeployError, deploy
from torchslim.deploy._isolated import WORKER_START_S, isolation_plan
from torchslim.deploy._onnx import export_onnx, scope_module
from torchslim.errors import ConfigError

WEIGHTED = (nn.Conv2d, nn.Linear)


@pytest.mark.parametrize("name", ["tiny-cnn", "tiny-resnet8"])
def test_every_exported_weighted_node_maps_back_to_its_module(name: str, tmp_path: Path) -> None:
    entry = zoo.get(name)
    model = entry.load()
    export_onnx(model, entry.example_inputs(1), tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    owners = [scope_module(n.name) for n in graph.node if n.op_type in ("Conv", "Gemm")]
    layers = [n for n, m in model.named_modules() if isinstance(m, WEIGHTED)]
    assert sorted(owners) == sorted(layers)  # nested Sequentials and residual blocks alike


def test_ignored_layers_stay_fp32_in_every_onnxruntime_candidate() -> None:
    entry = zoo.get("tiny-resnet8")
    model = entry.load()
    config = DeployConfig(
        backend="onnxruntime", ignore=("layer1.0.conv1", "fc"), rounds=3, warmup=1,
        timing="in-process", cpu_features=ZEN2,
    )  # fmt: skip
    stages: list[str] = []
    deployed = deploy(model, entry.calibration_batches(2), config, progress=stages.append)
    assert [line.split()[0] for line in stages] == ["exporting", "checking", "timing"]
    kept = ["/layer1/layer1.0/conv1/Conv", "/fc/Gemm"]
    assert deployed.settings["kept_fp32"] == kept
    for node in kept:  # read back from the quantized graph: a float weight, fp32 compute
        assert any(op.endswith(node) for op in deployed.fp32_ops)
    graph = onnx.load_from_string(deployed.artifact["model.onnx"]).graph
    int8 = [
        t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1
    ]
    quantized_layers = sum(isinstance(m, WEIGHTED) for m in model.modules()) - len(kept)
    assert len(int8) == quantized_layers
    (x,) = entry.example_inputs(8)
    with torch.inference_mode():
        cosine = torch.cosine_similarity(model(x), deployed(x), dim=1).mean().item()
    assert cosine > 0.98


def test_an_unknown_ignored_layer_is_refused() -> None:
    entry = zoo.get("tiny-cnn")
    config = DeployConfig(backend="onnxruntime", ignore=("features.9",), timing="in-process")
    with pytest.raises(DeployError, match=r"ignore names no module.*features\.9"):
        deploy(entry.load(), entry.calibration_batches(1), config)
    with pytest.raises(ConfigError, match="ignore"):
        DeployConfig(precision="bf16", ignore=("fc",))


def test_the_budget_sets_how_many_finalists_are_timed_alone() -> None:
    unlimited = isolation_plan(DeployConfig(finalists=4, instances=2), 10, elapsed_s=100.0)
    assert (unlimited.finalists, unlimited.instances) == (4, 2)
    # room for three worker processes: three finalists, one process each
    plan = isolation_plan(DeployConfig(budget_s=10 + 3 * WORKER_START_S), 10, elapsed_s=10.0)
    assert (plan.finalists, plan.instances) == (3, 1) and "budget" in plan.why
    spent = isolation_plan(DeployConfig(budget_s=12.0), 10, elapsed_s=11.0)
    assert spent.finalists == 0 and "in-process race decides" in spent.why
    in_process = isolation_plan(DeployConfig(timing="in-process"), 10, elapsed_s=0.0)
    assert in_process.finalists == 0
    with pytest.raises(ConfigError, match="budget_s"):
        DeployConfig(budget_s=0)
