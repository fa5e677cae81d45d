"""The CUDA paths, checked on a GPU machine: evaluation on the device agrees with the CPU, the
pipeline runs with ``--device cuda``, and distillation trains under torchrun with nccl.

    python benchmarks/gpu_check.py              # needs a CUDA device; writes gpu_check.json

Each check records what it compared and whether it held; the script exits 1 if any failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from torchslim import zoo
from torchslim._machine import machine_facts
from torchslim.evaluate import evaluate

RESULTS = Path(__file__).parent / "results"
MODELS = ("tiny-resnet", "tiny-bert", "tiny-llama", "tiny-vit")


def evaluate_on_both(name: str) -> dict[str, Any]:
    """The same model's metrics on CPU and on CUDA (fp32): they must agree to 1e-4."""
    entry = zoo.get(name)
    cpu = evaluate(entry.load(), entry, repeats=5)
    gpu = evaluate(entry.load(), entry, device="cuda", repeats=20)
    agree = all(abs(cpu.metrics[k] - gpu.metrics[k]) < 1e-4 for k in ("cosine_vs_reference",))
    return {
        "ok": agree,
        "cpu_metrics": cpu.metrics,
        "cuda_metrics": gpu.metrics,
        "cpu_latency_ms": cpu.latency.median,
        "cuda_latency_ms": gpu.latency.median,
        "cuda_peak_memory_bytes": gpu.peak_memory_bytes,
    }


def command(args: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    payload: Any = None
    if result.returncode == 0 and "{" in result.stdout:
        payload = json.loads(result.stdout[result.stdout.index("{") :])
    return {"ok": result.returncode == 0, "args": args[1:], "returncode": result.returncode,
            "stderr_tail": result.stderr[-1500:], "json": payload}  # fmt: skip


def main() -> None:
    if not torch.cuda.is_available():
        sys.exit("no CUDA device here")
    checks: dict[str, Any] = {f"evaluate {n} cpu vs cuda": evaluate_on_both(n) for n in MODELS}
    cli = [sys.executable, "-m", "torchslim"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    with tempfile.TemporaryDirectory() as tmp:
        checks["cli evaluate --device cuda"] = command(
            [*cli, "evaluate", "tiny-llama", "--device", "cuda", "--json"], env
        )
        checks["cli prune --device cuda"] = command(
            [*cli, "prune", "tiny-resnet", "--target", "macs=0.5", "--device", "cuda",
             "--out", f"{tmp}/p", "--json"], env,
        )  # fmt: skip
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "1"]
        checks["distill under torchrun, nccl"] = command(
            [*torchrun, "-m", "torchslim", "distill", "--teacher", "tiny-bert", "--student-from",
             "tiny-bert", "--drop-layers", "1", "--epochs", "2", "--train-batch-size", "8",
             "--device", "cuda", "--amp", "off", "--out", f"{tmp}/d", "--json"], env,
        )  # fmt: skip
    payload = {"benchmark": "gpu_check", "machine": machine_facts(),
               "cuda_device": torch.cuda.get_device_name(0), "torch": torch.__version__,
               "checks": checks}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = Path(os.environ.get("OUT", RESULTS)) / "gpu_check.json"
    out.write_text(json.dumps(payload, indent=2, default=str))
    failed = [name for name, check in checks.items() if not check["ok"]]
    print(json.dumps({"failed": failed, "written": str(out)}, indent=2))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
