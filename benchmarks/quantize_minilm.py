"""all-MiniLM-L6-v2 in int8: torchslim's measured choice vs the peers, one run, same inputs, CPU.

    python benchmarks/quantize_minilm.py            # batch 32 x seq 128 and batch 1 x seq 128
    python benchmarks/quantize_minilm.py --quick    # fewer timed rounds (a smoke run)

Variants, timed interleaved per batch size with the same real sentences (lee.cor, padded to 128
tokens), 2 threads each, ONNX Runtime spinning off: torch fp32 eager (baseline), ONNX Runtime
fp32, the peers as their docs use them (ONNX Runtime ``quantize_dynamic`` with its defaults,
torch.ao ``quantize_dynamic`` of every Linear, OpenVINO + NNCF ``quantize`` in transformer mode
with the plugin's default precision), torchslim's ``deploy_text_int8`` choice, and that choice
with padding trimmed (same outputs, less work: shown apart, never compared as like for like).
Each variant's WordSim-353 / SimLex-999 Spearman, mean cosine to fp32 on the 148 held-out
sentences and size on disk are measured too. Writes benchmarks/results/quantize_minilm.json.
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import torchslim.zoo
from torchslim._io import save_tensors
from torchslim._machine import machine_facts
from torchslim.benchmark import BenchmarkConfig, compare, write_result_json
from torchslim.deploy import text_onnx
from torchslim.deploy.text_config import TextDeployConfig
from torchslim.deploy.text_int8 import deploy_text_int8

RESULTS = Path(__file__).parent / "results"
BASELINE = "torch-fp32-eager"


class CallableModel(nn.Module):
    """A runtime callable as a module the zoo's metrics accept (they ask for a parameter's
    device, hence the empty anchor)."""

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.fn(*inputs)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed rounds, 1 warm-up")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 1])
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per variant, at most")
    parser.add_argument("--max-seconds", type=float, default=40.0, help="budget per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. machine load)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def onnxruntime_session(path: Path, threads: int) -> Callable[..., torch.Tensor]:
    runner = text_onnx.OnnxRuntimeTextRunner(path, ["input_ids", "attention_mask"], threads)
    return runner


def peer_onnxruntime(fp32: Path, workdir: Path) -> Path:
    """ONNX Runtime's documented dynamic quantization, defaults (QInt8 weights per tensor)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = workdir / "peer-ort-dynamic.onnx"
    quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8)
    return target


def peer_openvino(fp32: Path, entry: Any, workdir: Path, threads: int) -> tuple[Any, list[Path]]:
    """OpenVINO + NNCF as documented for transformers; the plugin's default precision."""
    import nncf
    import openvino as ov

    feeds = [
        {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        for ids, mask in entry.calibration_batches(8)
    ]
    quantized = nncf.quantize(
        ov.convert_model(str(fp32)), nncf.Dataset(feeds), model_type=nncf.ModelType.TRANSFORMER
    )
    xml = workdir / "peer-openvino-nncf.xml"
    ov.save_model(quantized, str(xml), compress_to_fp16=False)
    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(xml)), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    )
    request = compiled.create_infer_request()

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        result = request.infer({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        return torch.from_numpy(result[0].copy())

    return run, [xml, xml.with_suffix(".bin")]


def torch_bytes(model: nn.Module) -> int:
    """Size of a state dict as torch.save writes it (only measured here, never loaded)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def build_variants(
    entry: Any, model: nn.Module, workdir: Path, args: argparse.Namespace
) -> tuple[dict[str, nn.Module], dict[str, Any], dict[str, str]]:
    """Every variant as a module, its size on disk and build facts, and skipped ones."""
    variants: dict[str, nn.Module] = {BASELINE: model}
    info: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    fp32_path = workdir / "fp32.onnx"
    safetensors = workdir / "fp32.safetensors"
    save_tensors(safetensors, model.state_dict())
    info[BASELINE] = {"size_bytes": safetensors.stat().st_size}
    text_onnx.export_text_onnx(
        model, entry.example_inputs(2), ["input_ids", "attention_mask"], fp32_path
    )
    variants["onnxruntime-fp32"] = CallableModel(onnxruntime_session(fp32_path, args.threads))
    info["onnxruntime-fp32"] = {"size_bytes": fp32_path.stat().st_size}
    peer_path = peer_onnxruntime(fp32_path, workdir)
    variants["peer-onnxruntime-quantize_dynamic"] = CallableModel(
        onnxruntime_session(peer_path, args.threads)
    )
    info["peer-onnxruntime-quantize_dynamic"] = {"size_bytes": peer_path.stat().st_size}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated and says so
        ao = torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
        )
    variants["peer-torch.ao-quantize_dynamic"] = ao
    info["peer-torch.ao-quantize_dynamic"] = {"size_bytes": torch_bytes(ao)}
    try:
        run, files = peer_openvino(fp32_path, entry, workdir, args.threads)
        variants["peer-openvino-nncf"] = CallableModel(run)
        info["peer-openvino-nncf"] = {"size_bytes": sum(f.stat().st_size for f in files)}
    except ImportError as error:
        skipped["peer-openvino-nncf"] = f"not installed: {error}"
    return variants, info, skipped


def add_torchslim(
    entry: Any, model: nn.Module, variants: dict[str, nn.Module], info: dict[str, Any], args: Any
) -> None:
    """torchslim's measured choice (timed by deploy_text_int8 at the benchmark's batch sizes),
    and the same choice with padding trimmed."""
    config = TextDeployConfig(
        batch_sizes=tuple(sorted(set(args.batch_sizes))), threads=args.threads,
        rounds=3 if args.quick else 20,
    )  # fmt: skip
    started = time.perf_counter()
    deployed = deploy_text_int8(model, entry, config=config)
    seconds = time.perf_counter() - started
    variants["torchslim-int8"] = deployed
    info["torchslim-int8"] = {
        "size_bytes": deployed.saved_size_bytes(),
        "chosen": deployed.candidate,
        "deploy_seconds": seconds,
        "decision": deployed.decision,
        "settings": deployed.settings,
        "fp32_ops": deployed.fp32_ops,
    }
    with tempfile.TemporaryDirectory() as tmp:
        trimmed_config = TextDeployConfig.from_dict(
            {**config.to_dict(), "backend": deployed.backend, "trim_padding": True}
        )
        trimmed = copy.copy(deployed)  # same runner and files; only forward's trimming differs
        trimmed.config = trimmed_config
        deployed.save(Path(tmp) / "artifact")
        info["torchslim-int8"]["artifact_files"] = sorted(p.name for p in Path(tmp).rglob("*.*"))
    variants["torchslim-int8+trim-padding"] = trimmed
    info["torchslim-int8+trim-padding"] = {
        "size_bytes": deployed.saved_size_bytes(),
        "note": "same runner; trailing all-padding columns dropped: less work than the others",
    }


def main() -> None:
    args = parse_args()
    if args.quick:
        args.rounds = 3
    console = Console(width=140)
    torch.set_num_threads(args.threads)
    entry = torchslim.zoo.get("minilm")
    model = entry.load()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        variants, info, skipped = build_variants(entry, model, Path(tmp), args)
        add_torchslim(entry, model, variants, info, args)
        bench = BenchmarkConfig(
            1 if args.quick else 3, args.rounds, args.threads, args.max_seconds, 0
        )
        per_batch: dict[str, Any] = {}
        for batch_size in args.batch_sizes:
            inputs = entry.example_inputs(batch_size)
            calls = {name: (lambda m=m, x=inputs: m(*x)) for name, m in variants.items()}
            result = compare(calls, BASELINE, bench)
            result.skipped.update(skipped)
            per_batch[str(batch_size)] = result.to_dict()
            console.print(result.to_table(title=f"minilm, batch {batch_size} x seq 128"))
        for name, module in variants.items():
            started = time.perf_counter()
            info[name]["metrics"] = entry.evaluate(module)
            info[name]["evaluate_seconds"] = time.perf_counter() - started
    payload = {
        "benchmark": "quantize_minilm",
        "model": "minilm",
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "threads": args.threads,
        "quick": args.quick,
        "machine": machine_facts(),
        "variants": info,
        "skipped": skipped,
        "batch_sizes": per_batch,
        "summary": summary(info, per_batch),
    }
    console.print(f"wrote {write_result_json('quantize_minilm', payload, args.out_dir)}")
    console.print(summary_table(payload["summary"]["rows"]))
    console.print(payload["summary"]["torchslim_vs_peers"])


def summary(info: dict[str, Any], per_batch: dict[str, Any]) -> dict[str, Any]:
    """One row per variant (latency and speed-up per batch size, metrics, size), and per batch
    size torchslim's choice against the fastest peer and the fastest peer that keeps cosine
    >= 0.99 to fp32."""
    rows: dict[str, Any] = {}
    for name, facts in info.items():
        row: dict[str, Any] = {"size_bytes": facts["size_bytes"], **facts.get("metrics", {})}
        for size, result in per_batch.items():
            variant = result["variants"].get(name)
            if variant:
                row[f"b{size}_median_ms"] = variant["median_ms"]
                row[f"b{size}_speedup_vs_torch_fp32"] = variant["speedup_vs_baseline"]
        rows[name] = row
    versus: dict[str, Any] = {}
    for size in per_batch:
        key = f"b{size}_median_ms"
        peers = {n: r[key] for n, r in rows.items() if n.startswith("peer-") and key in r}
        accurate = {n: t for n, t in peers.items() if rows[n].get("cosine_vs_fp32", 0) >= 0.99}
        ours = rows["torchslim-int8"][key]
        versus[f"batch_{size}"] = {
            label: _versus(group, ours)
            for label, group in (("fastest_peer", peers), ("fastest_accurate_peer", accurate))
            if group
        }
    return {"rows": rows, "torchslim_vs_peers": versus}


def _versus(peers: dict[str, float], ours_ms: float) -> dict[str, Any]:
    fastest = min(peers, key=peers.__getitem__)
    return {
        "peer": fastest,
        "peer_median_ms": peers[fastest],
        "torchslim_speedup_vs_peer": peers[fastest] / ours_ms,
    }


def summary_table(rows: dict[str, Any]) -> Table:
    columns = sorted({k for row in rows.values() for k in row if k.startswith("b")})
    table = Table(title="minilm int8: one run, same inputs")
    for header in ["variant", *columns, "wordsim353", "simlex999", "cosine", "MB"]:
        table.add_column(header, justify="right")
    for name, row in rows.items():
        cells = [f"{row[c]:.2f}" if c in row else "-" for c in columns]
        metrics = [
            f"{row[k]:.4f}" if k in row else "-"
            for k in ("wordsim353_spearman", "simlex999_spearman", "cosine_vs_fp32")
        ]
        table.add_row(name, *cells, *metrics, f"{row['size_bytes'] / 1e6:.1f}")
    return table


if __name__ == "__main__":
    main()
