"""Does 2x fewer MACs give 2x the speed? Dense vs structured-pruned models timed in the same run.

For each model: the dense model, the model pruned to ``--macs-ratio`` fewer MACs with kept widths
as chosen (``round_to=1``; widths only), the same target with kept widths rounded to multiples of
``--round-to`` (what CPU GEMM/conv kernels run fastest), and (``--depth auto``, CNNs) the same
target met by latency-aware depth + width pruning (residual blocks dropped where they save more
predicted latency per output damage; ``--depth measured``: the fastest of candidate depth/width
plans timed on this machine, ``depth_measured``), interleaved on the same inputs with warm-up and
medians.
The depth variant is planned twice: as before (latency scored at batch 1, ``round_to=1``:
``depth_auto_b1``) and with ``--round-to`` and latency scored at ``--latency-batch-sizes``
(``depth_auto``). Optionally the pruned models are evaluated (and fine-tuned) on the zoo data.
``--clock thread_cpu`` times with ``time.thread_time`` (1 thread): on a core shared with other
jobs, time spent descheduled does not count. ``--conv-probe`` adds the conv-kernel timings
behind ``profile.conv_kernels`` (channel counts just past a oneDNN block of 16).

    python benchmarks/prune_speed.py --models fashion-resnet20 fashion-resnet56 --depth measured \
        --no-widths-only --clock thread_cpu --evaluate --finetune-epochs 1 \
        --finetune-samples 20000 --name prune_speed-resnet-measured

    python benchmarks/prune_speed.py --models fashion-resnet20 fashion-resnet56 \
        --no-widths-only --clock thread_cpu --conv-probe --evaluate --finetune-epochs 1 \
        --finetune-samples 20000 --name prune_speed-resnet-multibatch

    python benchmarks/prune_speed.py                                   # resnet20/56 + minilm
    python benchmarks/prune_speed.py --models fashion-resnet20 --round-to 1 --finetune-epochs 1

Writes benchmarks/results/prune_speed.json (or --name).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

import torchslim.zoo
from torchslim._machine import machine_facts
from torchslim.benchmark import BenchmarkConfig, compare, write_result_json
from torchslim.distill.student import parse_indices
from torchslim.profile import profile
from torchslim.prune import StructuredPruneConfig, prune_
from torchslim.prune.config_widths import holds_hugging_face_model
from torchslim.prune.finetune import FinetuneConfig, finetune_

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+",
                        default=["fashion-resnet20", "fashion-resnet56", "minilm"])  # fmt: skip
    parser.add_argument("--macs-ratio", type=float, default=0.5, help="fraction of MACs removed")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--depth", choices=["off", "auto", "measured"], nargs="+",
                        default=["auto"],
                        help="auto: add the latency-aware depth+width variants (greedy, "
                             "predicted latency); measured: add the variant chosen by timing "
                             "candidate plans (depth_measured)")  # fmt: skip
    parser.add_argument("--calibration-batches", type=int, default=2,
                        help="batches the depth planner measures damage on")  # fmt: skip
    parser.add_argument("--drop-layers", default="",
                        help="transformers: layers dropped before widths, e.g. 1,2")  # fmt: skip
    parser.add_argument("--latency-batch-sizes", type=int, nargs="+", default=[1, 16],
                        help="batch sizes the depth planner scores latency at")  # fmt: skip
    parser.add_argument("--no-widths-only", action="store_true",
                        help="skip the widths-only variants (pruned_round*)")  # fmt: skip
    parser.add_argument("--clock", choices=["wall", "thread_cpu"], default="wall")
    parser.add_argument("--conv-probe", action="store_true", help="time the conv kernel cliffs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--max-seconds", type=float, default=15.0)
    parser.add_argument("--evaluate", action="store_true", help="zoo metrics of every variant")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--finetune-samples", type=int, default=None)
    parser.add_argument("--note", default="", help="recorded in the JSON (e.g. machine load)")
    parser.add_argument("--name", default="prune_speed")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def prune_variants(entry: Any, dense: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Each variant's pruned copy of ``dense``, its prune result and its planning seconds."""
    ratio = args.macs_ratio
    configs: dict[str, tuple[StructuredPruneConfig, Any]] = {}
    if not args.no_widths_only:
        for r in sorted({1, args.round_to}):
            configs[f"pruned_round{r}"] = (
                StructuredPruneConfig(target_macs_ratio=ratio, round_to=r),
                None,
            )
    if args.drop_layers and holds_hugging_face_model(dense):
        layers = tuple(parse_indices(args.drop_layers))
        configs["drop_layers"] = (
            StructuredPruneConfig(target_macs_ratio=ratio, drop_layers=layers),
            None,
        )
    plain = not holds_hugging_face_model(dense)
    calibration = entry.calibration_batches(args.calibration_batches) if plain else None
    sizes = tuple(args.latency_batch_sizes)
    if "auto" in args.depth and plain:
        before = StructuredPruneConfig(target_macs_ratio=ratio, depth="auto",
                                       latency_batch_sizes=(1,))  # fmt: skip
        configs["depth_auto_b1"] = (before, calibration)
        config = StructuredPruneConfig(target_macs_ratio=ratio, depth="auto",
                                       round_to=args.round_to,
                                       latency_batch_sizes=sizes)  # fmt: skip
        configs["depth_auto"] = (config, calibration)
    if "measured" in args.depth and plain:
        measured = StructuredPruneConfig(target_macs_ratio=ratio, depth="measured",
                                         round_to=args.round_to,
                                         latency_batch_sizes=sizes)  # fmt: skip
        configs["depth_measured"] = (measured, calibration)
    inputs = tuple(entry.example_inputs(1))
    variants: dict[str, Any] = {}
    for name, (config, calibration) in configs.items():
        model = copy.deepcopy(dense)
        started = time.perf_counter()
        result = prune_(model, config, inputs, calibration)
        seconds = time.perf_counter() - started
        variants[name] = {"model": model.eval(), "result": result, "seconds": seconds}
    return variants


def time_variants(entry: Any, models: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    config = BenchmarkConfig(warmup=5, rounds=args.rounds, threads=args.threads,
                             max_seconds=args.max_seconds, clock=args.clock)  # fmt: skip
    out: dict[str, Any] = {}
    for batch_size in args.batch_sizes:
        batch = tuple(entry.example_inputs(batch_size))
        calls = {name: (lambda m=m, b=batch: m(*b)) for name, m in models.items()}
        with torch.no_grad():
            result = compare(calls, "dense", config)
        Console(width=120).print(result.to_table(title=f"{entry.name}, batch {batch_size}"))
        out[str(batch_size)] = result.to_dict()
    return out


def conv_probe(threads: int, clock: str) -> list[dict[str, Any]]:
    """Median ms of single 3x3 convs (28x28 and 14x14) around a 16-channel block, batch 1 and
    16: where oneDNN runs them (``conv_kernels.runs_onednn``) 17 channels cost as 32."""
    from torchslim.evaluate.latency import time_call
    from torchslim.profile.conv_kernels import runs_onednn

    rows = []
    shapes = [(16, 16), (17, 16), (16, 17), (32, 16), (16, 32), (24, 24), (32, 32), (33, 32)]
    with torch.no_grad():
        for batch, size in ((1, 28), (16, 28), (1, 14), (16, 14)):
            for c_in, c_out in shapes:
                x = torch.randn(batch, c_in, size, size)
                conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False).eval()
                for _ in range(5):
                    conv(x)
                call = lambda c=conv, x=x: c(x)  # noqa: E731
                ms = statistics.median(time_call(call, None, clock) for _ in range(25))
                onednn = runs_onednn(tuple(x.shape), tuple(conv.weight.shape), threads, False)
                rows.append({"batch": batch, "hw": size, "in": c_in, "out": c_out,
                             "median_ms": ms, "onednn": onednn})  # fmt: skip
    return rows


def run_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    entry = torchslim.zoo.get(name)
    dense = entry.load().eval()
    inputs = tuple(entry.example_inputs(1))
    variants = prune_variants(entry, dense, args)
    models = {"dense": dense, **{k: v["model"] for k, v in variants.items()}}
    macs = {k: profile(m, inputs, measure_memory=False).total.macs for k, m in models.items()}
    row: dict[str, Any] = {
        "macs": macs,
        "macs_ratio_dense_over": {k: macs["dense"] / v for k, v in macs.items()},
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "plans": {k: str(v["result"].plan) for k, v in variants.items()},
        "prune_seconds": {k: round(v["seconds"], 1) for k, v in variants.items()},
        "latency": time_variants(entry, models, args),
    }
    row["speedup"] = {
        batch: {k: v["speedup_vs_baseline"] for k, v in timing["variants"].items()}
        for batch, timing in row["latency"].items()
    }
    if args.evaluate:
        row["metrics"] = {k: entry.evaluate(m) for k, m in models.items()}
    if args.finetune_epochs and entry.task == "image-classification":
        tune = FinetuneConfig(args.finetune_epochs, args.finetune_samples)
        row["finetuned_metrics"] = {}
        for k, m in models.items():
            if k != "dense":
                finetune_(entry, m, tune)
                row["finetuned_metrics"][k] = entry.evaluate(m.eval())
    return row


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    payload: dict[str, Any] = {
        "benchmark": "prune_speed",
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": args.note,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "models": {},
        "machine": machine_facts(),
    }
    if args.conv_probe:
        payload["conv_kernels"] = conv_probe(args.threads, args.clock)
    payload["clock"] = (
        "time.thread_time (CPU time of the timing thread; 1 thread, core shared)"
        if args.clock == "thread_cpu"
        else "time.perf_counter (wall)"
    )
    payload["command"] = "python benchmarks/prune_speed.py " + " ".join(sys.argv[1:])
    for name in args.models:
        payload["models"][name] = run_model(name, args)
        for batch, speedups in payload["models"][name]["speedup"].items():
            print(f"{name} batch {batch}: " + ", ".join(f"{k} {v:.2f}x" for k, v in
                                                          speedups.items()))  # fmt: skip
    path = write_result_json(args.name, payload, args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
