"""Each deploy backend runs the tiny CNN in int8 and agrees with fp32 and with fake-quant."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from cpu_kinds import CPU_KINDS, ZEN2, deploy_or_refusal
from models import tiny_convnet, tiny_images
from torchslim.deploy import DeployConfig, deploy, load_deployed
from torchslim.quantize.apply import quantize_
from torchslim.quantize.config import QuantConfig


def _calibration(n_batches: int = 4) -> list[tuple[torch.Tensor, ...]]:
    images, _ = tiny_images(16 * n_batches, seed=1)
    return [(chunk,) for chunk in images.split(16)]


def _trained_convnet() -> nn.Module:
    """The tiny CNN after a few seeded steps, so its top-1 is not a coin toss."""
    model = tiny_convnet(seed=0)
    images, labels = tiny_images(128, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return model.eval()


def _close_to(reference: nn.Module, deployed: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    with torch.inference_mode():
        expected, actual = reference(x), deployed(x)
    cosine = F.cosine_similarity(expected, actual, dim=1).mean().item()
    agreement = (expected.argmax(1) == actual.argmax(1)).float().mean().item()
    return cosine, agreement


def _quick_config(backend: str, activation: str) -> DeployConfig:
    """One backend, per-channel int8 weights, few timing rounds (tests check outputs, not speed)."""
    return DeployConfig(
        backend=backend,
        activation_type=activation,
        weight_granularity="channel",
        rounds=3,
        warmup=1,
        threads=2,  # and a 1-thread rival, whatever this machine's count
    )


@CPU_KINDS
@pytest.mark.parametrize("activation, label", [("uint8", "u8s8"), ("int8", "s8s8")])
def test_onnxruntime_int8_matches_fp32(activation: str, label: str, cpu: tuple[str, ...]) -> None:
    model = _trained_convnet()
    config = dataclasses.replace(_quick_config("onnxruntime", activation), cpu_features=cpu)
    deployed = deploy_or_refusal(model, _calibration(), config)
    if deployed is None:  # full-range weights on a CPU whose int8 kernels saturate: refused
        return
    x, _ = tiny_images(64, seed=5)
    cosine, agreement = _close_to(model, deployed, x)
    assert deployed.backend == "onnxruntime"
    assert deployed.candidate in (f"onnxruntime-{label}", f"onnxruntime-{label}-1thread")
    assert cosine > 0.99 and agreement >= 0.95
    assert deployed.settings["activation_type"] == activation and deployed.settings["per_channel"]
    # the artifact stores the conv and linear weights as int8 (not fp32 fake-quant)
    graph = onnx.load_from_string(deployed.artifact["model.onnx"]).graph
    int8_weights = [t for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert sorted(int(np.prod(t.dims)) for t in int8_weights)[-2:] == [36, 48]  # conv, linear
    assert deployed.saved_size_bytes() == len(deployed.artifact["model.onnx"])
    # without VNNI (VPMADDUBSW sums u8 x s8 pairs in int16) weights keep 7 bits: 255 * 64 * 2
    # fits int16, so no product saturates; with VNNI they use the full int8 range
    largest = max(
        int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max()) for t in int8_weights
    )
    assert largest <= 64 if cpu == ZEN2 else largest > 64
    assert deployed.settings["weight_bits"] == (7 if cpu == ZEN2 else 8)


def test_deployed_agrees_with_fake_quant_model() -> None:
    model = _trained_convnet()
    simulated = copy.deepcopy(model)
    quantize_(
        simulated, QuantConfig(weight="int8", activation="uint8", observer="minmax"), _calibration()
    )
    config = _quick_config("onnxruntime", "uint8")
    deployed = deploy(model, _calibration(), config)
    x, _ = tiny_images(64, seed=6)
    cosine, agreement = _close_to(simulated, deployed, x)
    assert cosine > 0.99 and agreement >= 0.95


@CPU_KINDS
def test_mlp_deploys_and_lists_fp32_ops(cpu: tuple[str, ...]) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    config = dataclasses.replace(_quick_config("onnxruntime", "uint8"), cpu_features=cpu)
    deployed = deploy_or_refusal(mlp, _calibration(), config)
    if deployed is None:  # full-range weights on a CPU whose int8 kernels saturate: refused
        return
    x, _ = tiny_images(32, seed=2)
    cosine, _ = _close_to(mlp, deployed, x)
    assert cosine > 0.99
    assert isinstance(deployed.fp32_ops, list)
    assert all(" " in op or op for op in deployed.fp32_ops)  # "<op type> <name>" entries


def test_openvino_candidates_run_int8() -> None:
    pytest.importorskip("openvino", reason="openvino extra not installed")
    model = _trained_convnet()
    config = _quick_config("openvino", "uint8")
    deployed = deploy(model, _calibration(), config)
    x, _ = tiny_images(64, seed=3)
    cosine, agreement = _close_to(model, deployed, x)
    assert deployed.backend == "openvino"
    # dynamic, per shape, per shape with threads free to move, per shape on 1 core
    variants = ("", "-static", "-static-unpinned", "-static-1thread")
    names = {f"openvino-{source}{v}" for source in ("nncf", "u8s8") for v in variants}
    assert set(deployed.decision["candidates"]) == names
    assert cosine > 0.99 and agreement >= 0.95


def test_static_shape_openvino_runner_matches_the_dynamic_one(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="openvino extra not installed")
    from torchslim.deploy import openvino_backend

    model = _trained_convnet()
    config = _quick_config("openvino", "uint8")
    deployed = deploy(model, _calibration(), config)
    out = deployed.save(tmp_path / "ov")
    unpinned_dynamic = {**deployed.settings, "static_shapes": False, "cpu_pinning": False}
    dynamic = openvino_backend.load(out, unpinned_dynamic, 2)
    pinned_static = {**deployed.settings, "static_shapes": True, "cpu_pinning": True}
    static = openvino_backend.load(out, pinned_static, 1)
    outputs = [(static(x), dynamic(x)) for x, _ in (tiny_images(n, seed=n + i) for i, n in
               enumerate((5, 5, 2)))]  # fmt: skip
    # a static request reuses its input and output buffers: earlier results must stay intact
    for got, expected in outputs:
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(outputs[0][0], outputs[1][0])  # two batches of the same shape
    assert static.shapes is not None and dynamic.shapes is None
    assert sorted(key[0][0] for key in static.shapes.by_shape) == [2, 5]  # one compile per shape
    assert static.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert static.compiled.get_property("ENABLE_CPU_PINNING") is True
    assert dynamic.compiled.get_property("ENABLE_CPU_PINNING") is False


def test_single_thread_candidates_are_saved_and_loaded_with_one_thread(tmp_path: Path) -> None:
    config = DeployConfig(
        backend="onnxruntime", activation_type="uint8", weight_granularity="tensor", rounds=3,
        warmup=1, timing="in-process", threads=2,
    )  # fmt: skip
    deployed = deploy(_trained_convnet(), _calibration(), config)
    table = deployed.decision["candidates"]
    assert set(table) == {"onnxruntime-u8s8-per-tensor", "onnxruntime-u8s8-per-tensor-1thread"}
    loaded = load_deployed(deployed.save(tmp_path / "ort"))
    threads = loaded.runtime.session.get_session_options().intra_op_num_threads
    assert threads == (1 if deployed.candidate.endswith("-1thread") else config.threads)
    assert loaded.settings["intra_op_threads"] == threads


@pytest.mark.slow
def test_torch_pt2e_inductor_runs_int8_and_round_trips_as_pt2(tmp_path: Path) -> None:
    pytest.importorskip("torchao", reason="torchao extra not installed")
    model = _trained_convnet()
    deployed = deploy(model, _calibration(), DeployConfig(backend="torch", rounds=3, warmup=1))
    x, _ = tiny_images(16, seed=4)
    cosine, agreement = _close_to(model, deployed, x)
    assert deployed.candidate == "torch-pt2e-x86-inductor"
    assert cosine > 0.99 and agreement >= 0.9
    assert set(deployed.artifact) == {"model.pt2"} and deployed.saved_size_bytes() > 0
    loaded = load_deployed(deployed.save(tmp_path / "pt2e"))
    with torch.inference_mode():
        assert torch.equal(loaded(x), deployed(x))


def test_nncf_candidates_are_openvino_ir_and_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("openvino", reason="openvino extra not installed")
    from torchslim.deploy import openvino_backend
    from torchslim.deploy._onnx import export_onnx, input_names
    from torchslim.deploy._runtime import to_numpy
    from torchslim.deploy.model import DeployedModel

    model, calibration = _trained_convnet(), _calibration()
    export_onnx(model, calibration[0], tmp_path / "fp32.onnx")
    feeds = [dict(zip(input_names(1), to_numpy(b), strict=True)) for b in calibration]
    config = DeployConfig(backend="openvino", single_thread=False)
    built, failed = openvino_backend.build(tmp_path / "fp32.onnx", feeds, config, tmp_path, [])
    assert not failed
    assert [c.name for c in built] == [
        "openvino-nncf", "openvino-nncf-static", "openvino-nncf-static-unpinned"
    ]  # fmt: skip
    candidate = built[1]
    assert set(candidate.files) == {"model.xml.gz", "model.bin"}
    assert candidate.settings["model_format"] == "openvino-ir"
    files = {name: path.read_bytes() for name, path in candidate.files.items()}
    saved = DeployedModel(candidate, files, {}, 0).save(tmp_path / "ir")
    loaded = load_deployed(saved)
    x, _ = tiny_images(8, seed=7)
    torch.testing.assert_close(loaded(x), candidate.runtime(x))
    cosine, agreement = _close_to(model, loaded, x)
    assert cosine > 0.99 and agreement >= 0.85


def test_bf16_runs_in_bf16_on_openvino_and_is_refused_without_bf16_compute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino", reason="openvino extra not installed")
    from torchslim.deploy import DeployError, openvino_backend

    model = _trained_convnet()
    config = DeployConfig(precision="bf16", rounds=3, warmup=1, timing="in-process")
    if "BF16" in openvino_backend.cpu_capabilities():
        deployed = deploy(model, _calibration(), config)
        x, _ = tiny_images(64, seed=3)
        cosine, agreement = _close_to(model, deployed, x)
        assert cosine > 0.99 and agreement >= 0.95
        assert all(name.startswith("openvino-bf16") for name in deployed.decision["candidates"])
        assert deployed.settings["inference_precision"] == "bf16"
        loaded = load_deployed(deployed.save(tmp_path / "bf16"))
        precision = loaded.runtime.compiled.get_property("INFERENCE_PRECISION_HINT")
        assert precision.get_type_name() == "bf16"  # what the plugin really runs, read back
        torch.testing.assert_close(loaded(x), deployed(x))
        fp32_bytes = 4 * sum(p.numel() for p in model.parameters())
        assert len(deployed.artifact["model.bin"]) < 0.6 * fp32_bytes  # weights stored in fp16
    # a CPU whose plugin has no bf16 compute would run "bf16" in f32: refused, saying so
    monkeypatch.setattr(openvino_backend, "cpu_capabilities", lambda: ["FP32", "INT8"])
    with pytest.raises(DeployError, match="this CPU has no bf16 compute"):
        deploy(model, _calibration(), config)
