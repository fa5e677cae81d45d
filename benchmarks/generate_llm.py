"""LLM generation speed and quality on real kernels: torch fp32 eager vs llama.cpp, SmolLM2-135M.

    OMP_NUM_THREADS=2 python benchmarks/generate_llm.py            # full (resumable: --merge)
    OMP_NUM_THREADS=2 python benchmarks/generate_llm.py --quick    # smoke run

Batch 1, greedy, a 128-token prompt (the first 128 tokens of Persuasion), 128 new tokens: the
prefill (prompt in one pass) in ms and the decode rate in tokens/s, median of ``--repeats``
after one warm-up, every runtime in the same process and thread count. Runtimes: torch fp32
eager with transformers' KV cache; llama.cpp (llama-cpp-python) on GGUF files: F32 (written by
torchslim from the fp32 model), llama.cpp's own quantization of that F32 file (Q8_0, Q4_0,
Q4_1: ``llama_model_quantize``), and torchslim GPTQ (sequential, act-order, static groups) on
the same block grids (Q4_0 = int4-g32, Q4_1 = uint4-g32) written into a copy of llama.cpp's own
file of that type (so the two files differ only in the codes of the Linear layers). Quality:
perplexity over 16 windows x 512 tokens per text (Austen, Lee; disjoint from the calibration
text) computed by llama.cpp itself for every GGUF, and by torch for the fp32 model and the
fake-quant GPTQ models before export (the round trip: llama.cpp's figure on the exported file
vs torch's before export). The zoo's SmolLM2 is Q4_1-derived: Q4_1 (asymmetric g32) reproduces
its own grid, Q4_0 (symmetric g32) is the informative 4-bit comparison.
Writes benchmarks/results/generate_llm.json.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from torchslim import zoo
from torchslim._hf_directory import hf_directory
from torchslim._io import write_json
from torchslim._machine import machine_facts
from torchslim.deploy.generate import (
    generate_llama_cpp,
    generate_torch,
    llama_cpp_window_nlls,
    load_llama_cpp,
)
from torchslim.deploy.gguf_llama import export_gguf
from torchslim.quantize import QuantConfig, quantize_
from torchslim.quantize.gptq import GPTQConfig, gptq_
from torchslim.zoo._assets import package_file
from torchslim.zoo.text import SMOLLM_GGUF, perplexity_spread, token_windows, window_nlls

OUTPUT = Path(__file__).parent / "results" / "generate_llm.json"
LLAMA_TYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_1": 3}  # LLAMA_FTYPE_MOSTLY_*
TORCHSLIM_FORMATS = {"Q4_0": "int4-g32", "Q4_1": "uint4-g32"}
PROMPT_TOKENS = NEW_TOKENS = 128
OPENVINO_VARIANTS = (  # generate_llm_openvino.VARIANTS, which runs in another Python
    "openvino_fp32", "openvino_int4_asym_g64", "openvino_int4_sym_g64", "openvino_int8",
)  # fmt: skip


def eval_windows(count: int) -> dict[str, torch.Tensor]:
    return {text: token_windows(f"{text}-eval", 512)[:count] for text in ("austen", "lee")}


def quality(nlls: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None) -> dict:
    return {
        text: perplexity_spread(values, None if reference is None else reference[text])
        for text, values in nlls.items()
    }


def time_runs(run: Any, repeats: int) -> dict[str, Any]:
    """One warm-up, then the median prefill ms and decode tokens/s of ``repeats`` runs."""
    run()
    results, wall, cpu = [], [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        results.append(run())
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {
        "prefill_ms": round(statistics.median(r.prefill_ms for r in results), 1),
        "decode_tokens_per_s": round(statistics.median(r.decode_tokens_per_s for r in results), 2),
        "prefill_ms_all": [round(r.prefill_ms, 1) for r in results],
        "decode_tokens_per_s_all": [round(r.decode_tokens_per_s, 2) for r in results],
        "first_new_tokens": results[0].new_tokens[:8],
        # the share of a shared core this process got: CPU / wall seconds of each whole run
        "run_wall_s_all": [round(v, 2) for v in wall],
        "run_cpu_s_all": [round(v, 2) for v in cpu],
    }


def llama_quantize(source: Path, target: Path, kind: str, threads: int) -> None:
    """llama.cpp's own quantization of ``source`` (F32) to ``kind``."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = LLAMA_TYPES[kind]
    params.nthread = threads
    code = llama_cpp.llama_model_quantize(
        str(source).encode(), str(target).encode(), ctypes.byref(params)
    )
    if code != 0:
        raise RuntimeError(f"llama_model_quantize({kind}) returned {code}")


def gptq_model(
    model: torch.nn.Module, kind: str, calibration: list, windows: dict, work: Path,
    wait_minutes: int = 0,
) -> tuple[torch.nn.Module, float, dict[str, torch.Tensor]]:  # fmt: skip
    """GPTQ on ``kind``'s grid, its seconds and torch's per-window NLLs; cached in ``work`` so
    a run can prepare it (``--prepare``) while llama.cpp is not there yet."""
    from safetensors.torch import load_file, save_file

    quantized = copy.deepcopy(model)
    quantize_(quantized, QuantConfig(weight=TORCHSLIM_FORMATS[kind], observer="minmax",
                                     ignore=("re:.*lm_head",)))  # fmt: skip
    weights, facts = work / f"gptq-{kind}.safetensors", work / f"gptq-{kind}.json"
    count = min(len(w) for w in windows.values())
    for _ in range(wait_minutes * 6):  # a --prepare run may still be writing it
        if facts.is_file():
            break
        time.sleep(10)
    if weights.is_file() and facts.is_file():
        quantized.load_state_dict(load_file(weights), strict=False)
        cached = json.loads(facts.read_text())
        if all(len(v) >= count for v in cached["nlls"].values()):
            nlls = {t: torch.tensor(v[:count], dtype=torch.float64)
                    for t, v in cached["nlls"].items()}  # fmt: skip
            return quantized, cached["seconds"], nlls
    start = time.perf_counter()
    gptq_(quantized, calibration, GPTQConfig(mode="sequential", act_order=True))
    seconds = time.perf_counter() - start
    nlls = {text: window_nlls(quantized, w) for text, w in windows.items()}
    state = {k: v.contiguous() for k, v in quantized.state_dict().items() if "layers" in k}
    save_file(state, weights)
    facts.write_text(json.dumps({"seconds": seconds,
                                 "nlls": {t: v.tolist() for t, v in nlls.items()}}))  # fmt: skip
    return quantized, seconds, nlls


def measure_gguf(path: Path, prompt: list[int], args: Any, windows: dict) -> dict[str, Any]:
    llm = load_llama_cpp(path, args.threads, context=512, all_logits=True)
    nlls = {text: llama_cpp_window_nlls(llm, w) for text, w in windows.items()}
    del llm
    llm = load_llama_cpp(path, args.threads, context=PROMPT_TOKENS + NEW_TOKENS + 8)
    speed = time_runs(lambda: generate_llama_cpp(llm, prompt, NEW_TOKENS), args.repeats)
    return {"file_mib": round(path.stat().st_size / 2**20, 1), **speed, "_nlls": nlls}


def f32_gguf(model: torch.nn.Module, work: Path) -> Path:
    """The fp32 model as an F32 GGUF file (written once into ``work``)."""
    path = work / "smollm2-f32.gguf"
    if not path.is_file():
        export_gguf(model, package_file(*SMOLLM_GGUF), path, float32=True)
    return path


def own_gguf(model: torch.nn.Module, kind: str, work: Path, threads: int) -> Path:
    """llama.cpp's own ``kind`` quantization of the F32 file (written once into ``work``)."""
    path = work / f"smollm2-llama.cpp-{kind}.gguf"
    if not path.is_file():
        llama_quantize(f32_gguf(model, work), path, kind, threads)
    return path


def gguf_files(model: torch.nn.Module, entry: Any, windows: dict, args: Any) -> dict[str, Path]:
    """Every GGUF row's file, made again where missing (GPTQ weights come from the cache)."""
    work = args.workdir
    files = {"llama.cpp_F32": f32_gguf(model, work)}
    for kind in LLAMA_TYPES:
        files[f"llama.cpp_{kind}"] = own_gguf(model, kind, work, args.threads)
    gptq = {kind: work / f"smollm2-torchslim-gptq-{kind}.gguf" for kind in TORCHSLIM_FORMATS}
    missing = [kind for kind, path in gptq.items() if not path.is_file()]
    calibration = entry.calibration_batches(args.calibration) if missing else []
    for kind in missing:
        quantized = gptq_model(model, kind, calibration, windows, work)[0]
        export_gguf(quantized, files[f"llama.cpp_{kind}"], gptq[kind])
    return files | {f"torchslim_gptq_{kind}": path for kind, path in gptq.items()}


def interleaved(
    model: torch.nn.Module, prompt: list[int], entry: Any, windows: dict, args: Any
) -> dict[str, Any]:
    """Decode and prefill speed only: one generation of every runtime per round, ``--interleave``
    rounds after one warm-up each, so that a change of load falls on every runtime alike; the
    order rotates by one each round (what ran just before a runtime changes what is in cache:
    in a fixed order GPTQ Q4_0 measured 10 % below llama.cpp's Q4_0, the same file type, and at
    par when the two alternated)."""
    runs = {"torch_fp32_eager": lambda: generate_torch(model, prompt, NEW_TOKENS, args.clock)}
    for name, path in gguf_files(model, entry, windows, args).items():
        llm = load_llama_cpp(path, args.threads, context=PROMPT_TOKENS + NEW_TOKENS + 8)
        runs[name] = functools.partial(generate_llama_cpp, llm, prompt, NEW_TOKENS, args.clock)
    results: dict[str, list[Any]] = {name: [] for name in runs}
    tokens = {name: run().new_tokens[:8] for name, run in runs.items()}  # warm-up
    names = list(runs)
    for round_index in range(args.interleave):  # each round starts one runtime later
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(runs[name]())
    rows = {}
    for name, done in results.items():
        decode = [r.decode_tokens_per_s for r in done]
        rows[name] = {
            "decode_tokens_per_s": round(statistics.median(decode), 2),
            "prefill_ms": round(statistics.median(r.prefill_ms for r in done), 1),
            "decode_tokens_per_s_all": [round(v, 2) for v in decode],
            "first_new_tokens": tokens[name],
        }
        print(name, rows[name]["decode_tokens_per_s"], rows[name]["prefill_ms"], flush=True)
    return {"rounds": args.interleave, "clock": args.clock, "threads": args.threads,
            "command": "python benchmarks/generate_llm.py " + " ".join(sys.argv[1:]),
            "load_average": os.getloadavg(), "rows": rows}  # fmt: skip


def hf_fp32_directory(model: torch.nn.Module, work: Path) -> Path:
    """The fp32 model as a Hugging Face directory (cached) for optimum-intel's export; the GGUF
    loader's ``quantization_config`` is dropped: the weights in it are plain fp32."""
    directory = work / "hf-fp32"
    config = directory / "config.json"
    if not config.is_file():
        directory.mkdir(parents=True, exist_ok=True)
        hf_directory(model).write(directory, model.state_dict())
        values = json.loads(config.read_text())
        values.pop("quantization_config", None)
        config.write_text(json.dumps(values, indent=2))
    return directory


def measure_openvino(name: str, inputs: dict[str, Any], args: Any) -> dict[str, Any]:
    """One OpenVINO row, measured by generate_llm_openvino.py in ``--openvino``'s Python."""
    work = args.workdir
    (work / "openvino-inputs.json").write_text(json.dumps(inputs))
    output = work / f"{name}-row.json"
    output.unlink(missing_ok=True)
    command = [args.openvino, str(Path(__file__).with_name("generate_llm_openvino.py")),
               "--inputs", str(work / "openvino-inputs.json"), "--variant", name,
               "--output", str(output)]  # fmt: skip
    subprocess.run(command, check=True)
    row = json.loads(output.read_text())
    row["_nlls"] = {t: torch.tensor(v, dtype=torch.float64) for t, v in row.pop("nlls").items()}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 windows, 1 repeat, Q4_0 only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--windows", type=int, default=16, help="eval windows per text")
    parser.add_argument("--calibration", type=int, default=8, help="512-token GPTQ windows")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/torchslim-generate-llm"))
    parser.add_argument("--merge", action="store_true", help="keep measured rows, add the rest")
    parser.add_argument(
        "--prepare", action="store_true", help="only the GPTQ models (no llama.cpp)"
    )
    parser.add_argument("--wait-prepared", type=int, default=0, help="minutes to wait for them")
    parser.add_argument(
        "--openvino", metavar="PYTHON", help="also the OpenVINO rows, run by this Python "
        "(a venv with optimum-intel, openvino, nncf; see benchmarks/README)",
    )  # fmt: skip
    parser.add_argument("--openvino-variants", nargs="+", choices=OPENVINO_VARIANTS)
    parser.add_argument(
        "--remeasure", nargs="+", default=[], metavar="ROW", help="measure these rows again "
        "although stored (torch_fp32_eager: the link between runs); old figures go to 'earlier'",
    )  # fmt: skip
    parser.add_argument("--note", default="")
    parser.add_argument(
        "--interleave", type=int, default=0, metavar="ROUNDS",
        help="speed only: every runtime once per round, ROUNDS rounds, into 'interleaved'",
    )  # fmt: skip
    parser.add_argument(
        "--clock", choices=("wall", "thread_cpu"), default="wall",
        help="thread_cpu: the calling thread's CPU time (1 thread only; for a shared core)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.openvino_variants and not args.openvino:
        parser.error("--openvino-variants needs --openvino PYTHON (the Python that runs them)")
    if args.openvino and args.prepare:
        parser.error("--prepare only prepares the GPTQ models: drop --openvino")
    args.threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    if args.clock == "thread_cpu" and args.threads != 1:
        parser.error("--clock thread_cpu counts one thread: set OMP_NUM_THREADS=1")
    torch.set_num_threads(args.threads)
    if args.quick:
        args.windows, args.repeats = 2, 1
    kinds = ["Q4_0"] if args.quick else list(LLAMA_TYPES)
    old = json.loads(OUTPUT.read_text()) if args.merge and OUTPUT.is_file() else {}
    rows: dict[str, Any] = old.get("rows", {})
    payload: dict[str, Any] = {
        "model": "smollm2-135m (Q4_1-derived)",
        "setup": {"batch": 1, "prompt_tokens": PROMPT_TOKENS, "new_tokens": NEW_TOKENS,
                  "greedy": True, "threads": args.threads, "repeats": args.repeats,
                  "eval_windows_per_text": args.windows, "calibration_windows": args.calibration},
        "runs": [*old.get("runs", []), {"command": "python benchmarks/generate_llm.py "
                                        + " ".join(sys.argv[1:]), "note": args.note,
                                        "load_average": os.getloadavg()}],
        "machine": machine_facts(),
        "rows": rows,
    }  # fmt: skip
    if "interleaved" in old:
        payload["interleaved"] = old["interleaved"]

    def save(name: str, row: dict[str, Any], reference: dict | None) -> None:
        nlls = row.pop("_nlls")
        row["run"] = len(payload["runs"]) - 1  # index into "runs": the command that measured it
        if name in rows and name in args.remeasure:
            earlier = {k: v for k, v in rows[name].items() if k not in ("window_nll", "earlier")}
            row["earlier"] = [*rows[name].get("earlier", []), earlier]
        row["perplexity"] = quality(nlls, reference)
        row["window_nll"] = {t: [round(float(v), 5) for v in n] for t, n in nlls.items()}
        rows[name] = row
        payload["timestamp_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(OUTPUT, payload)
        brief = {t: q["perplexity"] for t, q in row["perplexity"].items()}
        print(name, brief, row.get("prefill_ms"), row.get("decode_tokens_per_s"), flush=True)

    def stored(name: str) -> dict | None:
        row = rows.get(name)
        if (
            name not in args.remeasure
            and row
            and not args.quick
            and all(len(v) >= args.windows for v in row["window_nll"].values())
        ):
            return {t: torch.tensor(v[: args.windows], dtype=torch.float64)
                    for t, v in row["window_nll"].items()}  # fmt: skip
        return None

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    windows = eval_windows(args.windows)
    entry = zoo.get("smollm2-135m")
    model = entry.load()
    prompt = token_windows("austen-eval", 512)[0, :PROMPT_TOKENS].tolist()
    if args.interleave:
        payload["interleaved"] = interleaved(model, prompt, entry, windows, args)
        payload["timestamp_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json(OUTPUT, payload)
        return
    if args.prepare:
        calibration = entry.calibration_batches(args.calibration)
        for kind in TORCHSLIM_FORMATS:
            gptq_model(model, kind, calibration, windows, work)
        return
    reference = stored("torch_fp32_eager")
    if reference is not None:  # measured on more windows before: summarise the ones used here
        row = rows["torch_fp32_eager"]
        row.setdefault("perplexity_all_stored_windows", row["perplexity"])
        row["perplexity"] = quality(reference, None)
    if reference is None:
        nlls = {text: window_nlls(model, w) for text, w in windows.items()}
        speed = time_runs(lambda: generate_torch(model, prompt, NEW_TOKENS), args.repeats)
        save("torch_fp32_eager", {**speed, "_nlls": nlls}, None)
        reference = nlls
    if args.openvino:
        inputs = {"hf_dir": str(hf_fp32_directory(model, work)), "work": str(work),
                  "prompt": prompt, "new_tokens": NEW_TOKENS, "repeats": args.repeats,
                  "threads": args.threads,
                  "windows": {t: w.tolist() for t, w in windows.items()}}  # fmt: skip
        for name in args.openvino_variants or OPENVINO_VARIANTS:
            if stored(name) is None:
                save(name, measure_openvino(name, inputs, args), reference)
    if stored("llama.cpp_F32") is None:
        save("llama.cpp_F32", measure_gguf(f32_gguf(model, work), prompt, args, windows), reference)
    needed = [k for k in kinds if stored(f"llama.cpp_{k}") is None
              or (k in TORCHSLIM_FORMATS and stored(f"torchslim_gptq_{k}") is None)]  # fmt: skip
    calibration = entry.calibration_batches(args.calibration) if needed else []
    for kind in needed:
        own = own_gguf(model, kind, work, args.threads)
        if stored(f"llama.cpp_{kind}") is None:
            save(f"llama.cpp_{kind}", measure_gguf(own, prompt, args, windows), reference)
    for kind in needed:
        own = work / f"smollm2-llama.cpp-{kind}.gguf"
        if kind not in TORCHSLIM_FORMATS or stored(f"torchslim_gptq_{kind}") is not None:
            continue
        quantized, seconds, before = gptq_model(
            model, kind, calibration, windows, work, args.wait_prepared
        )
        path = work / f"smollm2-torchslim-gptq-{kind}.gguf"
        export = export_gguf(quantized, own, path)
        row = measure_gguf(path, prompt, args, windows)
        row["gptq_seconds"] = round(seconds, 1)
        row["layers_from_torchslim"] = len(export.written)
        row["torch_fake_quant_before_export"] = quality(before, reference)
        save(f"torchslim_gptq_{kind}", row, reference)
        del quantized
    payload["runs"][-1]["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_json(OUTPUT, payload)


if __name__ == "__main__":
    main()
