"""Peak memory of LLM calibration on SmolLM2-135M (Q4_1-derived): each method in its own process.

    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/calibration_memory.py --label streamed
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/calibration_memory.py --label mem --in-memory

One fresh Python process per method, so no row inherits another's allocations: imports, the
calibration windows (tokenizer included), the fp32 model, then the method alone inside
``PeakRSS`` (the kernel's high-water mark reset on entry), then a perplexity evaluation inside
its own ``PeakRSS`` (evaluation memory is reported apart from the method's). Per method: the
RSS after the imports, after loading the model (what the method starts from), the method's
peak RSS in bytes and as a ratio to the fp32 model size (parameters x 4 bytes), the method's
own overhead above the loaded model, the RSS after it, the evaluation's peak and the quick
perplexity (``--eval-windows`` windows of 512 tokens per text, disjoint from calibration), so
that a memory change can be checked not to change results. By default the method is streamed
(``torchslim.stream``: a meta skeleton filled from the GGUF block by block while the method
runs, so "after loading" is the skeleton and the method's peak includes reading the weights);
``--in-memory`` loads the whole fp32 model first and runs ``quantize_``/``awq_``/``gptq_`` or
``prune_`` on it. ``--label`` names the row set (e.g.
"before" run against an older checkout via PYTHONPATH, "after"); the library's git commit is
recorded with it. Writes benchmarks/results/<name>.json, keeping the other labels' rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
METHODS = ("fp32", "rtn", "gptq", "awq", "awq_gptq", "sparsegpt", "wanda")
MIB = 2**20


def _rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return 1024 * int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _run(method: str, model: Any, calibration: list[Any], weight: str) -> None:
    """One compression method, in place (``fp32``: nothing)."""
    from torchslim.prune import UnstructuredPruneConfig, prune_  # imported before measuring
    from torchslim.quantize import QuantConfig, quantize_
    from torchslim.quantize.awq import AWQConfig, awq_
    from torchslim.quantize.gptq import GPTQConfig, gptq_

    if method in ("sparsegpt", "wanda"):
        prune_(model, UnstructuredPruneConfig(0.5, method, "layer"), calibration=calibration)
        return
    if method == "fp32":
        return
    quantize_(model, QuantConfig(weight=weight, observer="minmax", ignore=("re:.*lm_head",)))
    if method.startswith("awq"):
        awq_(model, calibration, AWQConfig())
    if method.endswith("gptq"):
        gptq_(model, calibration, GPTQConfig(mode="sequential", act_order=True))


def _run_streamed(method: str, entry: Any, model: Any, calibration: list[Any], weight: str) -> None:
    """One method, streamed into the skeleton ``model`` (``fp32``: the weights alone)."""
    from torchslim.prune import UnstructuredPruneConfig
    from torchslim.quantize import QuantConfig
    from torchslim.quantize.awq import AWQConfig
    from torchslim.quantize.gptq import GPTQConfig
    from torchslim.stream import StreamedMethod, calibrate_streamed_
    from torchslim.zoo._gguf import materialize_, tie_

    weights = entry.weights(model)
    if method == "fp32":
        materialize_(model, weights)
        tie_(model)
        return
    if method in ("sparsegpt", "wanda"):
        spec = StreamedMethod(prune=UnstructuredPruneConfig(0.5, method, "layer"))
    else:
        quant = QuantConfig(weight=weight, observer="minmax", ignore=("re:.*lm_head",))
        awq = AWQConfig() if method.startswith("awq") else None
        gptq = GPTQConfig(mode="sequential", act_order=True) if method.endswith("gptq") else None
        spec = StreamedMethod(quant=quant, awq=awq, gptq=gptq)
    calibrate_streamed_(model, weights, spec, calibration)


def _fp32_bytes(entry: Any, model: Any, streamed: bool) -> int:
    """4 bytes per parameter of the fp32 model, tied weights once (before the method: fake-quant
    layers add their scales). A skeleton is untied: its checkpoint's tensors are counted."""
    if streamed:
        stored = entry.weights(model).names()
        return 4 * sum(p.numel() for n, p in model.named_parameters() if n in stored)
    unique = {id(p): p for p in model.parameters()}
    return 4 * sum(p.numel() for p in unique.values())


def child(
    method: str, weight: str, calibration_windows: int, eval_windows: int, streamed: bool
) -> dict[str, Any]:
    """Measure one method in this (fresh) process; the row of figures."""
    import torch

    from torchslim import zoo
    from torchslim.evaluate.memory import PeakRSS
    from torchslim.zoo.text import perplexity_spread, token_windows, window_nlls

    _run("fp32", None, [], weight)  # imports every method's modules: not the method's memory
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    row: dict[str, Any] = {"rss_after_imports_bytes": _rss_bytes()}
    entry = zoo.get("smollm2-135m")
    calibration = entry.calibration_batches(calibration_windows)
    eval_texts = {t: token_windows(f"{t}-eval", 512)[:eval_windows] for t in ("austen", "lee")}
    row["rss_after_calibration_data_bytes"] = _rss_bytes()
    with PeakRSS() as load:
        model = entry.skeleton() if streamed else entry.load()
    row.update({
        "load_peak_rss_bytes": load.peak_bytes,
        "rss_after_load_bytes": _rss_bytes(),
    })  # fmt: skip
    fp32_bytes = _fp32_bytes(entry, model, streamed)
    row["fp32_model_bytes"] = fp32_bytes
    with PeakRSS() as rss:
        start = time.perf_counter()
        if streamed:
            _run_streamed(method, entry, model, calibration, weight)
        else:
            _run(method, model, calibration, weight)
        seconds = time.perf_counter() - start
    after_load = row["rss_after_load_bytes"]
    row.update({
        "seconds": round(seconds, 1),
        "peak_rss_bytes": rss.peak_bytes,
        "peak_rss_reset": rss.reset,
        "peak_rss_over_fp32_model": round(rss.peak_bytes / fp32_bytes, 3),
        "method_overhead_bytes": rss.peak_bytes - after_load,
        "method_overhead_over_fp32_model": round((rss.peak_bytes - after_load) / fp32_bytes, 3),
        "rss_after_method_bytes": _rss_bytes(),
    })  # fmt: skip
    with PeakRSS() as evaluation:
        model.eval()
        nlls = {t: window_nlls(model, w) for t, w in eval_texts.items()}
    row["eval_peak_rss_bytes"] = evaluation.peak_bytes
    for text, values in nlls.items():
        row[f"perplexity_{text}"] = perplexity_spread(values)["perplexity"]
        row[f"window_nll_{text}"] = [float(v) for v in values]
    row["summary_mib"] = {
        k[: -len("_bytes")]: round(v / MIB) for k, v in row.items() if k.endswith("_bytes")
    }
    return row


def library_commit() -> str:
    """The git commit (and dirtiness) of the torchslim this process imports."""
    import torchslim

    source = Path(torchslim.__file__).parent
    try:
        git = ["git", "-C", str(source)]
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run([*git, "status", "--porcelain", "."], capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return f"unknown ({source})"
    return commit + (" (dirty)" if dirty else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--weight", default="uint4-g64", help="weight format of the quantizers")
    parser.add_argument("--calibration", type=int, default=4, help="512-token windows")
    parser.add_argument("--eval-windows", type=int, default=2, help="512-token windows per text")
    parser.add_argument("--label", required=True, help='row set, e.g. "before" or "after"')
    parser.add_argument("--name", default="calibration_memory", help="results/<name>.json")
    parser.add_argument("--note", default="", help="e.g. the machine's load")
    parser.add_argument(
        "--in-memory",
        action="store_true",
        help="load the whole fp32 model, then run the method (not streamed)",
    )
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        streamed = not args.in_memory
        row = child(args.child, args.weight, args.calibration, args.eval_windows, streamed)
        print("ROW " + json.dumps(row), flush=True)
        return
    from torchslim._io import write_json
    from torchslim._machine import machine_facts

    output = RESULTS / f"{args.name}.json"
    payload = json.loads(output.read_text()) if output.is_file() else {}
    payload.update({
        "model": "smollm2-135m (Q4_1-derived), fp32",
        "what": __doc__.split("\n\n")[2].replace("\n", " "),
        "machine": machine_facts(),
    })  # fmt: skip
    rows = payload.setdefault("results", {}).setdefault(args.label, {})
    payload.setdefault("runs", {})[args.label] = {
        "command": "OMP_NUM_THREADS=1 nice -n 5 python benchmarks/calibration_memory.py "
        + " ".join(sys.argv[1:]),
        "library_commit": library_commit(),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "weight": args.weight, "calibration_windows": args.calibration,
        "eval_windows_per_text": args.eval_windows, "streamed": not args.in_memory,
        "note": args.note, "load_average_at_start": os.getloadavg(),
    }  # fmt: skip
    for method in args.methods:
        command = [sys.executable, __file__, "--child", method, "--label", args.label,
                   "--weight", args.weight, "--calibration", str(args.calibration),
                   "--eval-windows", str(args.eval_windows)]  # fmt: skip
        command += ["--in-memory"] if args.in_memory else []
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("ROW ")]
        if done.returncode or not lines:
            raise SystemExit(f"{method} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        rows[method] = json.loads(lines[-1][4:])
        payload["timestamp_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(output, payload)
        figures = {k: v for k, v in rows[method].items() if k.startswith("perplexity")}
        print(args.label, method, rows[method]["summary_mib"], rows[method]["seconds"], "s",
              figures, flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
