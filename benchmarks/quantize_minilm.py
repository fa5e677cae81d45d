"""all-MiniLM-L6-v2 in int8: torchslim's measured choice vs the peers, one run, same inputs, CPU.

    python benchmarks/quantize_minilm.py            # batch 32 x seq 128 and batch 1 x seq 128
    python benchmarks/quantize_minilm.py --quick    # fewer timed rounds (a smoke run)

Variants, timed interleaved per batch size with the same real sentences (lee.cor, padded to 128
tokens), 2 threads each, ONNX Runtime spinning off, each loaded alone in its own worker process
(``--timing isolated``, the default; runtimes sharing one process slow each other down): torch
fp32 eager (baseline), ONNX Runtime fp32, the peers as their docs use them (ONNX Runtime
``quantize_dynamic`` with its defaults, torch.ao ``quantize_dynamic`` of every Linear, OpenVINO +
NNCF ``quantize`` in transformer mode with the plugin's default precision), torchslim's
``deploy_text_int8`` choice (deployed once per batch size, timed by deploy at that size), and
that choice with padding trimmed (same outputs, less work: shown apart, never compared as like
for like).
Each variant's WordSim-353 / SimLex-999 Spearman, mean cosine to fp32 on the 148 held-out
sentences and size on disk are measured too. Writes benchmarks/results/quantize_minilm.json.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
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
from torchslim.benchmark import (
    BenchmarkConfig,
    Isolation,
    WorkerVariant,
    compare,
    compare_on_inputs,
    load_inputs,
    write_result_json,
)
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
    parser.add_argument(
        "--timing",
        choices=("isolated", "in-process"),
        default="isolated",
        help="time each variant in its own worker process (default) or all in this one",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=3,
        help="worker processes per variant with --timing isolated (samples pooled)",
    )
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. machine load)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


# ---------------------------------------------------------------- worker factories
# Each rebuilds one variant alone in a fresh process (files, or the zoo for torch variants) and
# returns the call to time on the inputs saved at ``inputs`` (see --timing).


def eager_worker(inputs: str, threads: int) -> Callable[[], Any]:
    model, batch = torchslim.zoo.get("minilm").load().eval(), load_inputs(inputs)
    return lambda: model(*batch)


def torch_ao_worker(inputs: str, threads: int) -> Callable[[], Any]:
    model, batch = torch_ao_dynamic(torchslim.zoo.get("minilm").load().eval()), load_inputs(inputs)
    return lambda: model(*batch)


def ort_worker(path: str, inputs: str, threads: int) -> Callable[[], Any]:
    runner, batch = onnxruntime_session(Path(path), threads), load_inputs(inputs)
    return lambda: runner(*batch)


def openvino_worker(xml: str, inputs: str, threads: int) -> Callable[[], Any]:
    run, batch = openvino_request(Path(xml), threads), load_inputs(inputs)
    return lambda: run(*batch)


def deployed_worker(directory: str, inputs: str, threads: int, trim: bool) -> Callable[[], Any]:
    import dataclasses

    from torchslim.deploy.text_artifact import load_text_int8

    deployed, batch = load_text_int8(directory, threads), load_inputs(inputs)
    if trim:
        deployed.config = dataclasses.replace(deployed.config, trim_padding=True)
    return lambda: deployed(*batch)


def _spec(factory: Callable[..., Any], threads: int, **kwargs: Any) -> WorkerVariant:
    """``quantize_minilm:<factory>`` with its kwargs (paths as strings); inputs come later."""
    values = {k: str(v) if isinstance(v, Path) else v for k, v in kwargs.items()}
    return WorkerVariant(f"quantize_minilm:{factory.__name__}", {**values, "threads": threads})


def torch_ao_dynamic(model: nn.Module) -> nn.Module:
    """torch.ao's documented dynamic quantization of every Linear (qint8)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated and says so
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8
        )


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
    return openvino_request(xml, threads), [xml, xml.with_suffix(".bin")]


def openvino_request(xml: Path, threads: int) -> Callable[..., torch.Tensor]:
    """The peer's IR compiled for the CPU plugin: its default precision, fixed threads."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(
        core.read_model(str(xml)), "CPU", {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1}
    )
    request = compiled.create_infer_request()

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        result = request.infer({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        return torch.from_numpy(result[0].copy())

    return run


def torch_bytes(model: nn.Module) -> int:
    """Size of a state dict as torch.save writes it (only measured here, never loaded)."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@dataclass
class Variants:
    """Every variant: its module (accuracy, in-process timing), build facts, and the worker spec
    that rebuilds it alone in a fresh process (isolated timing); the skipped ones, with why."""

    modules: dict[str, nn.Module] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    workers: dict[str, WorkerVariant] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def add(self, name: str, module: nn.Module, size: int, worker: WorkerVariant) -> None:
        self.modules[name] = module
        self.info[name] = {"size_bytes": size}
        self.workers[name] = worker


def build_variants(
    entry: Any, model: nn.Module, workdir: Path, args: argparse.Namespace
) -> Variants:
    """torch fp32, ONNX Runtime fp32 and the three peers, each as its docs use it."""
    found, threads = Variants(), args.threads
    fp32_path = workdir / "fp32.onnx"
    safetensors = workdir / "fp32.safetensors"
    save_tensors(safetensors, model.state_dict())
    found.add(BASELINE, model, safetensors.stat().st_size, _spec(eager_worker, threads))
    text_onnx.export_text_onnx(
        model, entry.example_inputs(2), ["input_ids", "attention_mask"], fp32_path
    )
    runner = CallableModel(onnxruntime_session(fp32_path, args.threads))
    found.add(
        "onnxruntime-fp32",
        runner,
        fp32_path.stat().st_size,
        _spec(ort_worker, threads, path=fp32_path),
    )
    peer_path = peer_onnxruntime(fp32_path, workdir)
    found.add(
        "peer-onnxruntime-quantize_dynamic",
        CallableModel(onnxruntime_session(peer_path, args.threads)),
        peer_path.stat().st_size,
        _spec(ort_worker, threads, path=peer_path),
    )
    ao = torch_ao_dynamic(model)
    found.add(
        "peer-torch.ao-quantize_dynamic", ao, torch_bytes(ao), _spec(torch_ao_worker, threads)
    )
    try:
        run, files = peer_openvino(fp32_path, entry, workdir, args.threads)
        size = sum(f.stat().st_size for f in files)
        found.add(
            "peer-openvino-nncf",
            CallableModel(run),
            size,
            _spec(openvino_worker, threads, xml=files[0]),
        )
    except ImportError as error:
        found.skipped["peer-openvino-nncf"] = f"not installed: {error}"
    return found


def add_torchslim(
    entry: Any, model: nn.Module, found: Variants, workdir: Path, args: argparse.Namespace
) -> None:
    """torchslim's measured choice for each benchmark batch size (deploy_text_int8 timed at that
    batch size only: a deployment serves the batch size it is built for), and the same choice
    with padding trimmed (less work than the others: shown apart, never compared)."""
    threads = args.threads
    for batch in args.batch_sizes:
        config = TextDeployConfig(
            batch_sizes=(batch,), threads=args.threads, rounds=3 if args.quick else 20
        )
        started = time.perf_counter()
        deployed = deploy_text_int8(model, entry, config=config)
        seconds = time.perf_counter() - started
        directory = deployed.save(workdir / f"torchslim-b{batch}")
        name = f"torchslim-int8-b{batch}"
        found.add(name, deployed, deployed.saved_size_bytes(),
                  _spec(deployed_worker, threads, directory=directory, trim=False))  # fmt: skip
        found.info[name] |= {
            "chosen": deployed.candidate,
            "deploy_seconds": seconds,
            "decision": deployed.decision,
            "settings": deployed.settings,
            "fp32_ops": deployed.fp32_ops,
            "artifact_files": sorted(p.name for p in Path(directory).rglob("*.*")),
        }
        trimmed = copy.copy(deployed)  # same runner and files; only forward's trimming differs
        trimmed.config = dataclasses.replace(deployed.config, trim_padding=True)
        found.add(f"{name}+trim-padding", trimmed, deployed.saved_size_bytes(),
                  _spec(deployed_worker, threads, directory=directory, trim=True))  # fmt: skip
        found.info[f"{name}+trim-padding"]["note"] = (
            "same files; trailing all-padding columns dropped: less work than the others"
        )


def time_batch(found: Variants, batch: int, entry: Any, args: argparse.Namespace) -> Any:
    """One comparison at ``batch``: the variants it concerns (torchslim's build for this batch
    size), each in its own worker process (default) or all in this one."""
    names = [n for n in found.modules if not n.startswith("torchslim") or f"-b{batch}" in n]
    bench = BenchmarkConfig(1 if args.quick else 3, args.rounds, args.threads, args.max_seconds, 0)
    inputs = entry.example_inputs(batch)
    if args.timing == "in-process":
        calls = {n: (lambda m=found.modules[n], x=inputs: m(*x)) for n in names}
        return compare(calls, BASELINE, bench)
    workers = {n: found.workers[n] for n in names}
    return compare_on_inputs(workers, inputs, BASELINE, bench, Isolation(instances=args.instances))


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
        found = build_variants(entry, model, Path(tmp), args)
        add_torchslim(entry, model, found, Path(tmp), args)
        per_batch: dict[str, Any] = {}
        for batch_size in args.batch_sizes:
            result = time_batch(found, batch_size, entry, args)
            result.skipped.update(found.skipped)
            per_batch[str(batch_size)] = {"timing": args.timing, **result.to_dict()}
            console.print(result.to_table(title=f"minilm, batch {batch_size} x seq 128"))
        for name, module in found.modules.items():
            started = time.perf_counter()
            found.info[name]["metrics"] = entry.evaluate(module)
            found.info[name]["evaluate_seconds"] = time.perf_counter() - started
    payload = {
        "benchmark": "quantize_minilm",
        "model": "minilm",
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "threads": args.threads,
        "timing": args.timing,
        "quick": args.quick,
        "machine": machine_facts(),
        "variants": found.info,
        "skipped": found.skipped,
        "batch_sizes": per_batch,
        "summary": summary(found.info, per_batch),
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
        ours = rows[f"torchslim-int8-b{size}"][key]
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
