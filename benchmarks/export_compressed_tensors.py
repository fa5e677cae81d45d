"""SmolLM2-135M quantized by GPTQ, written as compressed-tensors, read back by plain transformers.

    taskset -c 1 nice -n 5 env OMP_NUM_THREADS=1 python benchmarks/export_compressed_tensors.py

In one process, on the same eval windows: the fp32 model's perplexity, the perplexity of
torchslim's quantized model (GPTQ, sequential, act-order with static groups, the quick setup of
quantize_llm.py: 4 calibration windows of 512 tokens, 2 eval windows per text by default), then
``export_compressed_tensors`` writes the HF directory and ``AutoModelForCausalLM.from_pretrained``
(transformers + compressed-tensors, no torchslim code in the loading) reads it, and the
reloaded model's perplexity is measured on the same windows: it must equal the one before
export (the per-window NLLs are compared). Sizes: the compressed-tensors ``model.safetensors``
against the fp32 ``model.safetensors`` of the same model (the HF directory torchslim writes;
``save_pretrained`` refuses a model transformers loaded from GGUF).
Writes benchmarks/results/export_compressed_tensors.json.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from quantize_llm import run_method, summarize, window_losses
from torchslim import zoo
from torchslim._hf_directory import hf_directory
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.deploy.compressed_tensors_export import export_compressed_tensors
from torchslim.quantize.awq import AWQConfig
from torchslim.quantize.gptq import GPTQConfig
from torchslim.quantize.rotate import RotateConfig
from torchslim.zoo.text import CausalLM

OUTPUT = Path(__file__).parent / "results" / "export_compressed_tensors.json"


def reloaded_losses(entry: Any, directory: Path, windows: int) -> tuple[dict, dict[str, Any]]:
    """Per-window NLLs of the model plain transformers loads from ``directory``; load facts."""
    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    loaded = AutoModelForCausalLM.from_pretrained(str(directory))
    facts = {"load_seconds": round(time.perf_counter() - start, 2),
             "class": type(loaded).__name__,
             "dtype": str(next(loaded.parameters()).dtype)}  # fmt: skip
    return window_losses(entry, CausalLM(loaded).eval(), windows), facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weight", default="uint4-g64", help="torchslim weight format")
    parser.add_argument("--calibration", type=int, default=4, help="512-token windows")
    parser.add_argument("--eval-windows", type=int, default=2, help="per text")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--note", default="", help="e.g. the machine's load")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    entry = zoo.get("smollm2-135m")
    base = entry.load()
    calibration = entry.calibration_batches(args.calibration)
    config = {"gptq": GPTQConfig(mode="sequential", act_order=True), "awq": AWQConfig(),
              "rot": RotateConfig()}  # fmt: skip
    reference = window_losses(entry, base, args.eval_windows)
    model, info = run_method(base, args.weight, "gptq", calibration, config)
    before = window_losses(entry, model, args.eval_windows)
    with tempfile.TemporaryDirectory(prefix="ct-export-") as scratch:
        start = time.perf_counter()
        export = export_compressed_tensors(model, Path(scratch) / "compressed")
        export_seconds = round(time.perf_counter() - start, 2)
        fp32 = hf_directory(base)  # the fp32 model as torchslim writes its HF directory
        (Path(scratch) / "fp32").mkdir()
        fp32.write(Path(scratch) / "fp32", base.state_dict())
        fp32_bytes = (Path(scratch) / "fp32" / "model.safetensors").stat().st_size
        after, load = reloaded_losses(entry, export.directory, args.eval_windows)
    differences = {k: float((after[k] - before[k]).abs().max()) for k in before}
    payload = {
        "model": "smollm2-135m (Q4_1-derived)",
        "method": f"GPTQ {args.weight} (sequential, act-order, static groups), lm_head fp32",
        "command": "taskset -c 1 nice -n 5 env OMP_NUM_THREADS=1 python "
        "benchmarks/export_compressed_tensors.py " + shlex.join(sys.argv[1:]),
        "setup": {"calibration_windows": args.calibration,
                  "eval_windows_per_text": args.eval_windows, "window_tokens": entry.window},
        "fp32": summarize(reference, None),
        "torchslim_before_export": summarize(before, reference),
        "transformers_after_reload": summarize(after, reference),
        "max_window_nll_difference": differences,
        "perplexity_equal": {k: round(float(after[k].mean().exp()), 6)
                             == round(float(before[k].mean().exp()), 6) for k in before},
        "quantize": info,
        "export": {"seconds": export_seconds, "layers": len(export.layers),
                   "quantization_config": export.quantization_config, **load},
        "size_bytes": {"compressed_tensors_safetensors": export.weights_bytes,
                       "fp32_safetensors": fp32_bytes,
                       "ratio": round(export.weights_bytes / fp32_bytes, 4)},
        "note": args.note,
        "machine": machine_facts(),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }  # fmt: skip
    write_json(args.output, payload)
    print({k: payload[k] for k in ("max_window_nll_difference", "perplexity_equal", "size_bytes")})


if __name__ == "__main__":
    main()
