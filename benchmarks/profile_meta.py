"""How long counting a model on meta takes: building it, counting it, and the whole CLI command.

Timing belongs here, not in tests. Writes benchmarks/results/profile_meta.json.

    python benchmarks/profile_meta.py [--model smollm2-135m] [--seq-len 512]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from torchslim import zoo
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.profile import profile

RESULTS = Path(__file__).parent / "results"


def _seconds(fn: object) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()  # type: ignore[operator]
    return time.perf_counter() - start, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--out", default=str(RESULTS / "profile_meta.json"))
    args = parser.parse_args()
    entry = zoo.get(args.model)
    build_s, model = _seconds(entry.meta_model)
    inputs = entry.meta_inputs(1, seq_len=args.seq_len)
    count_s, report = _seconds(lambda: profile(model, inputs, args.model))  # type: ignore[arg-type]
    command = [sys.executable, "-m", "torchslim", "profile", args.model, "--meta", "--json"]
    cli_s, _ = _seconds(
        lambda: subprocess.run(command, check=True, capture_output=True, env=dict(os.environ))
    )
    payload = {
        "benchmark": "profile_meta",
        "model": args.model,
        "seq_len": args.seq_len,
        "build_meta_model_s": build_s,
        "count_s": count_s,
        "cli_command": " ".join(command[1:]),
        "cli_s": cli_s,
        "macs": report.total.macs,  # type: ignore[attr-defined]
        "load_average": os.getloadavg()[0],
        "machine": machine_facts(),
    }
    write_json(args.out, payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
