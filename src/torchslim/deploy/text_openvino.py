"""OpenVINO side of text-encoder deployment: NNCF static int8 post-training quantization of the
ONNX export (transformer mode: SmoothQuant, arXiv:2211.10438, then bias correction), compiled by
the CPU plugin, which runs the linear layers *and* the attention matmuls in int8 (its "Subgraph"
MHA kernel). The ops it leaves in floating point run in bf16 or f32: both are candidates."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchslim.deploy._openvino import ShapeCompilations, first_output
from torchslim.deploy.config import DeployError

# Execution-graph layer types that are bookkeeping, not compute, in OpenVINO's runtime model.
_NOT_COMPUTE = (
    "Const", "Input", "Output", "Reorder", "Reshape", "FakeQuantize", "Convert", "ShapeOf",
    "Concatenation", "StridedSlice", "Broadcast", "Range", "Gather", "GatherElements",
)  # fmt: skip
Feeds = list[dict[str, np.ndarray]]


def nncf_quantize_text(onnx_path: Path, feeds: Feeds, target_xml: Path) -> dict[str, Any]:
    """Quantize the fp32 ONNX model with NNCF (OpenVINO backend, ``ModelType.TRANSFORMER``) on
    every calibration batch; save the OpenVINO IR (``.xml`` + ``.bin``, weights not fp16)."""
    import nncf
    import openvino as ov

    fp32 = ov.convert_model(str(onnx_path))
    quantized = nncf.quantize(
        fp32, nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(feeds)
    )
    ov.save_model(quantized, str(target_xml), compress_to_fp16=False)
    return {"nncf_version": nncf.__version__, "nncf_model_type": "transformer"}


class OpenVinoTextRunner:
    """An OpenVINO IR compiled for the CPU plugin: latency hint, one stream, fixed threads, and
    the floating-point precision of the ops left unquantized (``"bf16"`` or ``"f32"``).

    With ``static_shapes`` the IR is also compiled once per input shape it meets
    (:class:`~torchslim.deploy._openvino.ShapeCompilations`); other shapes run on the dynamic
    compilation.
    """

    backend = "openvino"

    def __init__(
        self,
        xml: Path,
        names: list[str],
        threads: int,
        precision: str,
        streams: int = 1,
        static_shapes: bool = False,
    ) -> None:
        import openvino as ov

        if precision not in ("bf16", "f32"):
            raise DeployError(f"OpenVINO inference precision must be bf16 or f32, got {precision}")
        core = ov.Core()
        model = core.read_model(str(xml))
        properties = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
        }
        self.compiled = core.compile_model(model, "CPU", properties)
        self.request = self.compiled.create_infer_request()
        # Batches of >= 2 rows per stream are split over ``streams`` streams of threads/streams
        # threads each, run at once: no barrier between the threads of one big matmul, and each
        # stream's activations stay in its core's cache. Small batches use the single stream.
        self.parallel: list[Any] = []
        if streams > 1:
            split = {**properties, "NUM_STREAMS": streams, "PERFORMANCE_HINT": "THROUGHPUT"}
            compiled = core.compile_model(model, "CPU", split)
            self.parallel = [compiled.create_infer_request() for _ in range(streams)]
        self.path, self.names, self.threads, self.streams = xml, list(names), threads, streams
        self.static_shapes = static_shapes
        self.shapes = ShapeCompilations(core, model, properties) if static_shapes else None
        # what the plugin really uses: a CPU without bf16 in hardware runs "bf16" as f32
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        expected = [port.get_any_name() for port in self.compiled.inputs]
        if expected != self.names:
            raise DeployError(f"{xml.name} takes inputs {expected}, expected {self.names}")

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        arrays = [x.detach().to("cpu").contiguous().numpy() for x in inputs]
        if self.parallel and arrays[0].shape[0] >= 2 * len(self.parallel):
            return self._split_call(arrays)
        static = self.shapes.request(arrays) if self.shapes else None
        if static is not None:  # its inputs are in self.names order (checked in __init__)
            return torch.from_numpy(static(arrays))
        return torch.from_numpy(first_output(self.request, arrays))

    def _split_call(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """Rows split evenly over the streams' requests, run asynchronously, joined in order."""
        chunks = [np.array_split(a, len(self.parallel)) for a in arrays]  # [input][stream]
        for i, request in enumerate(self.parallel):
            request.start_async(
                {
                    name: np.ascontiguousarray(c[i])
                    for name, c in zip(self.names, chunks, strict=True)
                }
            )
        outputs = []
        for request in self.parallel:
            request.wait()
            outputs.append(np.array(request.get_output_tensor(0).data, copy=True))
        return torch.from_numpy(np.concatenate(outputs))

    def runtime_precisions(self) -> dict[str, int]:
        """Compute layers of the compiled graph by "<layer type> <runtime precision>"."""
        counts: collections.Counter[str] = collections.Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
            if layer not in _NOT_COMPUTE:
                counts[f"{layer} {precision}"] += 1
        return dict(sorted(counts.items()))

    def fp32_ops(self) -> list[str]:
        """Compute layers that run in floating point (f32 or bf16), with their source names."""
        listed = []
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
            if layer not in _NOT_COMPUTE and precision in ("f32", "bf16", "f16"):
                names = info["originalLayersNames"].astype(str)[:120]
                listed.append(f"{layer} ({precision}) {names}")
        return listed

    def settings(self) -> dict[str, Any]:
        return {
            "engine": "openvino",
            "inference_precision": self.precision,
            "inference_threads": self.threads,
            "streams": self.streams,
            "static_shapes": self.static_shapes,
            "runtime_precisions": self.runtime_precisions(),
        }
