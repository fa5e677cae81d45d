"""Deep Compression (Han et al., arXiv 1510.00149) on a zoo CNN: gradual magnitude pruning with
fine-tuning → k-means weight sharing → centroid fine-tuning → packed (relative indices, codes,
Huffman or zstd). Reports the size ladder (dense fp32 safetensors, pruned, clustered, coded), the
accuracy at every stage, and checks that the packed file loads back bit for bit.

    python benchmarks/deep_compression.py --model mnist-cnn
    python benchmarks/deep_compression.py --model fashion-cnn --samples 30000

Writes benchmarks/results/deep_compression-<model>.json. Ladder rungs are all written by
``torchslim.pack`` except the dense file (``model.safetensors`` as every artifact writes it):
"pruned" = masks folded, fp32 values (raw or zstd); "clustered" = codebooks + fixed-width codes
and indices (no entropy coder); "coded" = the same with Huffman / zstd per stream.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchslim.zoo
from torchslim._io import load_state_dict_strict, save_tensors
from torchslim._machine import machine_facts
from torchslim.benchmark import write_result_json
from torchslim.pack import PackConfig, pack_model, unpack_state
from torchslim.prune.apply import config_from_words
from torchslim.prune.finetune import FinetuneConfig, finetune_
from torchslim.prune.schedule import prune_gradually_
from torchslim.prune.unstructured import folded_copy
from torchslim.share import ClusterConfig, cluster_, codebook_groups

RESULTS = Path(__file__).parent / "results"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mnist-cnn")
    parser.add_argument("--sparsity", type=float, default=0.93, help="global magnitude sparsity")
    parser.add_argument("--steps", type=int, default=3, help="cubic pruning steps")
    parser.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per step")
    parser.add_argument("--samples", type=int, default=None, help="training images per epoch")
    parser.add_argument("--bits", type=int, default=4, help="codebook: 2^bits centroids")
    parser.add_argument("--cluster-epochs", type=int, default=1)
    parser.add_argument(
        "--groups", nargs="*", default=[], help="layer patterns, each sharing one codebook"
    )
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    return parser.parse_args()


def held_out_accuracy(entry: Any, model: nn.Module) -> dict[str, float]:
    """The zoo metric; for mnist-cnn also the 4 000 digits fine-tuning never saw (its only
    labelled set is digits.png, whose 1 000 calibration digits are the training split here)."""
    metrics = dict(entry.evaluate(model))
    if entry.name == "mnist-cnn":
        from torchslim.zoo.vision import _digits_split, accuracy

        (x, y), _ = _digits_split()
        first = torch.cat([torch.arange(d * 500, d * 500 + 100) for d in range(10)])
        unseen = torch.ones(len(x), dtype=torch.bool)
        unseen[first] = False
        metrics["accuracy_unseen_4000"] = accuracy(model, x[unseen], y[unseen])
    return metrics


def packed_size(model: nn.Module, coders: tuple[str, ...], scratch: Path) -> dict[str, Any]:
    groups = codebook_groups(model)  # a group's codebook stored once
    result = pack_model(folded_copy(model), scratch / "model.packed", PackConfig(coders), groups)
    return {"bytes": result.bytes, "bytes_per_layer": result.layers,
            "shared_codebooks": result.codebooks,
            "tensors": result.summary()["tensors"]}  # fmt: skip


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    entry = torchslim.zoo.get(args.model)
    model = entry.load()
    stages: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        save_tensors(scratch / "dense.safetensors", model.state_dict())
        dense_bytes = (scratch / "dense.safetensors").stat().st_size
        stages["dense"] = {"bytes": dense_bytes, "metrics": held_out_accuracy(entry, model)}
        augment = args.model != "mnist-cnn"  # a flipped digit is another digit
        tune = FinetuneConfig(args.epochs, args.samples, args.lr, augment=augment)
        started = time.perf_counter()
        config = config_from_words("magnitude", f"sparsity={args.sparsity}")
        inputs = tuple(entry.example_inputs(1))
        prune_gradually_(model, config, inputs, args.steps, lambda m, _: finetune_(entry, m, tune))
        pruned = packed_size(model, ("huffman", "zstd"), scratch)
        stages["pruned"] = {**pruned, "seconds": _since(started),
                            "metrics": held_out_accuracy(entry, model.eval())}  # fmt: skip
        started = time.perf_counter()
        cluster_(model, ClusterConfig(bits=args.bits, groups=tuple(args.groups)))
        stages["clustered_before_finetune"] = {"metrics": held_out_accuracy(entry, model)}
        tune = FinetuneConfig(args.cluster_epochs, args.samples, args.lr / 2, augment=augment)
        finetune_(entry, model, tune)
        stages["clustered"] = {**packed_size(model, (), scratch), "seconds": _since(started),
                               "metrics": held_out_accuracy(entry, model.eval())}  # fmt: skip
        coded = packed_size(model, ("huffman", "zstd"), scratch)
        restored = entry.load()
        load_state_dict_strict(restored, unpack_state(scratch / "model.packed"), "packed")
        folded = folded_copy(model).state_dict()
        exact = all(
            torch.equal(folded[k].reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8))
            for k, v in unpack_state(scratch / "model.packed").items()
        )
        stages["coded"] = {**coded, "bit_exact_round_trip": exact,
                           "metrics": held_out_accuracy(entry, restored.eval())}  # fmt: skip
    report(args, stages, dense_bytes)


def report(args: argparse.Namespace, stages: dict[str, Any], dense_bytes: int) -> None:
    dense_acc = stages["dense"]["metrics"]["accuracy"]
    final_acc = stages["coded"]["metrics"]["accuracy"]
    ladder = {name: stages[name]["bytes"] for name in ("dense", "pruned", "clustered", "coded")}
    payload = {
        "benchmark": "deep_compression",
        "model": args.model,
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": vars(args) | {"out_dir": str(args.out_dir)},
        "size_ladder_bytes": ladder,
        "ratio_vs_fp32_safetensors": {k: round(dense_bytes / v, 2) for k, v in ladder.items()},
        "accuracy_drop_points": round(100 * (dense_acc - final_acc), 2),
        "goal": "ratio >= 49 and accuracy drop <= 0.5 pt (paper: 39-49x, arXiv 1510.00149)",
        "stages": stages,
        "machine": machine_facts(),
        "note": "shared 2-core machine, busy with other jobs; sizes and accuracy do not depend "
        "on load, seconds do",
    }
    path = write_result_json(f"deep_compression-{args.model}", payload, args.out_dir)
    print(f"ladder {ladder}; ratio {payload['ratio_vs_fp32_safetensors']['coded']}x; accuracy "
          f"{dense_acc:.4f} -> {final_acc:.4f}; wrote {path}")  # fmt: skip


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 1)


if __name__ == "__main__":
    main()
