"""OpenVINO backend: the CPU plugin runs a quantized graph in int8 (its low-precision
transformations turn FakeQuantize or Q/DQ pairs into int8 kernels). Two sources of that graph
compete: NNCF's post-training quantization of the fp32 export through its OpenVINO backend
(saved as OpenVINO IR, ``model.xml.gz`` + ``model.bin``), and ONNX Runtime's QDQ graphs built
beside it (a compact ``model.onnx``). Each is compiled several ways (:func:`variants`)."""

from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from torchslim.deploy import onnxruntime_backend
from torchslim.deploy._openvino import ShapeCompilations, first_output
from torchslim.deploy._runtime import Candidate, Feeds, require, saved_file, to_numpy
from torchslim.deploy.config import DeployConfig, DeployError

# Execution-graph layer types that are bookkeeping, not compute, in OpenVINO's runtime model.
_NOT_COMPUTE = ("Const", "Input", "Output", "Reorder", "Reshape", "FakeQuantize", "Convert")


class Compilation(NamedTuple):
    """How one graph is compiled: per input shape or dynamic, threads, threads pinned to cores,
    and the precision of the ops left in floating point ("f32", or "bf16" for a bf16 deploy)."""

    static_shapes: bool
    threads: int
    pinned: bool = True
    precision: str = "f32"

    def suffix(self, default_threads: int) -> str:
        """The candidate-name suffix of this compilation (empty for the plugin's defaults)."""
        return (
            ("-static" if self.static_shapes else "")
            + ("-1thread" if self.threads == 1 < default_threads else "")
            + ("" if self.pinned else "-unpinned")
        )


class OpenVinoRunner:
    """A model compiled for OpenVINO's CPU plugin: latency hint, one stream, fixed threads,
    the ops left unquantized in ``compilation.precision`` (f32 unless asked: the plugin would
    pick bf16 by itself on AVX512-BF16 CPUs).

    ``compilation`` says whether it is also compiled once per input shape it meets
    (:class:`~torchslim.deploy._openvino.ShapeCompilations`), its thread count, and whether its
    threads are pinned to cores (the plugin's default; on a quiet machine it measured 10-25 %
    faster at batch 16 here, but pinned threads cannot move off a core another process is busy
    on, so an unpinned rival is built too and the measurement decides).
    """

    def __init__(self, path: Path, compilation: Compilation) -> None:
        import openvino as ov

        core = ov.Core()
        model = read_model(core, path)
        properties = {
            "INFERENCE_NUM_THREADS": compilation.threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": compilation.precision,
            "ENABLE_CPU_PINNING": compilation.pinned,
        }
        self.core, self.model, self.properties = core, model, properties
        self.precision = compilation.precision
        static = compilation.static_shapes
        self.shapes = ShapeCompilations(core, model, properties) if static else None
        # a static-shape runner compiles the dynamic graph only when a call or fp32_ops needs
        # it (a shape past ShapeCompilations' limit): no idle second compilation in memory
        self._compiled: Any = None
        self._request: Any = None
        if not static:
            self._compile_dynamic()

    def _compile_dynamic(self) -> None:
        if self._compiled is None:
            self._compiled = self.core.compile_model(self.model, "CPU", self.properties)
            self._request = self._compiled.create_infer_request()

    @property
    def compiled(self) -> Any:
        """The dynamic-shape compilation (compiled on first use)."""
        self._compile_dynamic()
        return self._compiled

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        arrays = to_numpy(inputs)
        static = self.shapes.request(arrays) if self.shapes is not None else None
        if static is not None:
            return torch.from_numpy(static(arrays))
        self._compile_dynamic()
        return torch.from_numpy(first_output(self._request, arrays))

    def fp32_ops(self) -> list[str]:
        """Compute layers of the compiled graph that run in floating point: f32, bf16 or f16
        for an int8 graph (not quantized), f32 or f16 for a bf16 one (not in bf16)."""
        fallback = ("f32", "f16") if self.precision == "bf16" else ("f32", "bf16", "f16")
        listed = []
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer, precision = info["layerType"].astype(str), info["runtimePrecision"].astype(str)
            if layer not in _NOT_COMPUTE and precision in fallback:
                listed.append(f"{layer} {info['originalLayersNames'].astype(str)}")
        return listed


def read_model(core: Any, path: Path) -> Any:
    """An ONNX file, or OpenVINO IR whose ``.xml`` is gzipped (``model.xml.gz`` beside
    ``model.bin``): the IR's XML text is as large as its int8 weights for a small CNN (158 KB
    next to 277 KB for resnet20) and gzips 20x."""
    if not path.name.endswith(".xml.gz"):
        return core.read_model(str(path))
    import openvino as ov

    weights = np.fromfile(path.with_name(path.name.removesuffix(".xml.gz") + ".bin"), np.uint8)
    return core.read_model(model=gzip.decompress(path.read_bytes()), weights=ov.Tensor(weights))


def nncf_quantize(
    fp32_path: Path, feeds: Feeds, out_xml_gz: Path, overflow_fix: str, excluded: tuple[str, ...]
) -> None:
    """NNCF post-training quantization through its OpenVINO backend (NNCF's documented flow:
    ``ov.convert_model`` of the fp32 export, ``nncf.quantize`` on all calibration samples),
    saved as OpenVINO IR: ``<name>.xml.gz`` (gzipped graph) + ``<name>.bin`` (int8 weights,
    nothing compressed to fp16). ``overflow_fix``: NNCF's 7-bit weights on "enable"d layers
    (every layer where the CPU's int8 products saturate: :func:`overflow_fix_for`);
    ``excluded``: weighted node names NNCF leaves in floating point (its ignored scope)."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    dataset = nncf.Dataset(feeds)
    advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix))
    model = ov.convert_model(str(fp32_path))
    # OpenVINO splits an ONNX node into parts named "<node>/..." (Gemm: MatMul + Add)
    patterns = [f"{re.escape(name)}(/.*)?" for name in excluded]
    ignored = nncf.IgnoredScope(patterns=patterns) if excluded else None
    quantized = nncf.quantize(
        model,
        dataset,
        subset_size=len(feeds),
        advanced_parameters=advanced,
        ignored_scope=ignored,
    )
    save_ir_gzipped(quantized, out_xml_gz, compress_to_fp16=False)


def overflow_fix_for(config: DeployConfig) -> str:
    """NNCF's overflow fix: on every layer ("enable") where int8 products saturate (x86
    without VNNI), else NNCF's default, the first layer only."""
    from torchslim._machine import int8_products_saturate

    return "enable" if int8_products_saturate(config.features()) else "first_layer_only"


def save_ir_gzipped(model: Any, out_xml_gz: Path, compress_to_fp16: bool) -> None:
    """An OpenVINO model saved as ``<name>.xml.gz`` (the graph, gzipped) + ``<name>.bin``."""
    import openvino as ov

    xml = out_xml_gz.with_name(out_xml_gz.name.removesuffix(".gz"))
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    out_xml_gz.write_bytes(gzip.compress(xml.read_bytes()))
    xml.unlink()


def build(
    fp32_path: Path,
    feeds: Feeds,
    config: DeployConfig,
    workdir: Path,
    qdq_candidates: list[Candidate],
    excluded: tuple[str, ...] = (),
) -> tuple[list[Candidate], dict[str, str]]:
    """NNCF's graph (``excluded`` nodes left in floating point; the QDQ graphs come so) and
    every ONNX Runtime QDQ graph, each compiled by OpenVINO."""
    require("openvino")
    candidates: list[Candidate] = []
    failed: dict[str, str] = {}
    overflow_fix = overflow_fix_for(config)
    sources: list[tuple[str, Path | None, dict[str, Any]]] = [
        ("openvino-nncf", None, {"quantizer": "nncf", "overflow_fix": overflow_fix})
    ]
    for other in qdq_candidates:
        qdq = other.settings
        if not qdq["per_channel"] or qdq["intra_op_threads"] != config.threads:
            continue  # OpenVINO runs each per-channel graph once; per-tensor adds no new kernel
        label = other.name.removeprefix("onnxruntime-")
        graph = {k: qdq[k] for k in onnxruntime_backend.GRAPH_SETTINGS}
        sources.append(
            (f"openvino-{label}", other.files["model.onnx"], {"quantizer": "onnxruntime", **graph})
        )
    for name, path, settings in sources:
        try:
            if path is None:
                path = workdir / f"{name}.xml.gz"
                nncf_quantize(fp32_path, feeds, path, overflow_fix, excluded)
            built = [
                _compiled(name, path, settings, compilation, config.threads)
                for compilation in variants(config)
            ]
        except Exception as error:  # a failing variant is reported; the others still compete
            failed[name] = f"{type(error).__name__}: {str(error).strip()[:300]}"
            continue
        candidates += built
    return candidates, failed


def build_bf16(
    fp32_path: Path, config: DeployConfig, workdir: Path
) -> tuple[list[Candidate], dict[str, str]]:
    """The fp32 graph as OpenVINO IR (weights stored in fp16, half the bytes), compiled with
    bf16 inference precision every way :func:`variants` lists.

    Raises:
        DeployError: the CPU plugin reports no bf16 compute on this machine: it would run the
            "bf16" model in f32, so there is nothing to deploy.
    """
    import openvino as ov

    from torchslim._machine import bf16_native

    capabilities = cpu_capabilities()
    if "BF16" not in capabilities or not bf16_native(config.features()):
        raise DeployError(
            "this CPU has no bf16 compute (OpenVINO's CPU plugin reports "
            f"{capabilities}; the CPU features: avx512_bf16={config.features()['avx512_bf16']}, "
            f"amx_bf16={config.features()['amx_bf16']}; bf16 needs AVX512-BF16 or AMX): a bf16 "
            "model would run in f32 "
            "here, or slower through torch's emulation. Keep fp32, or deploy int8 "
            "(DeployConfig(precision='int8'))."
        )
    source = "openvino-bf16"
    path = workdir / f"{source}.xml.gz"
    save_ir_gzipped(ov.convert_model(str(fp32_path)), path, compress_to_fp16=True)
    settings = {"quantizer": None, "weights_on_disk": "f16"}
    candidates: list[Candidate] = []
    failed: dict[str, str] = {}
    for compilation in variants(config, precision="bf16"):
        try:
            candidates.append(_compiled(source, path, settings, compilation, config.threads))
        except Exception as error:  # a failing compilation is reported; the others compete
            failed[source + compilation.suffix(config.threads)] = f"{type(error).__name__}: {error}"
    return candidates, failed


def cpu_capabilities() -> list[str]:
    """What OpenVINO's CPU plugin can compute here, e.g. ``["FP32", "INT8", "BF16", ...]``."""
    require("openvino")
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def variants(config: DeployConfig, precision: str = "f32") -> list[Compilation]:
    """The compilations of one graph: dynamic and static shapes at ``config.threads``, static
    unpinned, and static on 1 thread when ``config.single_thread`` allows it."""
    threads = config.threads
    found = [
        Compilation(False, threads, True, precision),
        Compilation(True, threads, True, precision),
        Compilation(True, threads, False, precision),
    ]
    one = Compilation(True, 1, True, precision)
    return [*found, one] if 1 in config.thread_options()[1:] else found


def _compiled(
    source: str, path: Path, settings: dict[str, Any], compilation: Compilation, threads: int
) -> Candidate:
    """One OpenVINO compilation of ``path`` as a candidate named after it (``threads``: the
    configured count, which needs no name suffix)."""
    runner = OpenVinoRunner(path, compilation)
    files = {"model.onnx": path}
    if path.name.endswith(".xml.gz"):  # OpenVINO IR: the gzipped graph and its weights file
        files = {"model.xml.gz": path, "model.bin": path.with_name(f"{source}.bin")}
    settings = {
        **settings,
        "engine": "openvino",
        "model_format": "openvino-ir" if "model.bin" in files else "onnx-qdq",
        "cpu_pinning": compilation.pinned,
        "inference_precision": compilation.precision,
        "inference_threads": compilation.threads,
        "streams": 1,
        "static_shapes": compilation.static_shapes,
    }
    name = source + compilation.suffix(threads)
    return Candidate(name, "openvino", runner, settings, files, runner.fp32_ops())


def load(directory: Path, settings: dict[str, Any], threads: int) -> OpenVinoRunner:
    name = "model.xml.gz" if settings.get("model_format") == "openvino-ir" else "model.onnx"
    path = saved_file(directory, name, "openvino", "an OpenVINO")
    static = bool(settings.get("static_shapes", False))
    pinned = bool(settings.get("cpu_pinning", False))
    precision = str(settings.get("inference_precision", "f32"))
    return OpenVinoRunner(path, Compilation(static, threads, pinned, precision))
