"""The OpenVINO rows of ``generate_llm.py``: run by it as a subprocess, in a Python that has
optimum-intel (whose pins would move the project's torch/transformers; see benchmarks/README).

    python benchmarks/generate_llm_openvino.py --inputs IN.json --variant NAME --output OUT.json

IN.json (written by generate_llm.py): the fp32 Hugging Face directory, the work directory, the
prompt ids, the eval windows per text, new tokens, repeats, threads. Each variant
is optimum-intel's stateful export (the KV cache lives in the infer request's state) of that
directory, its weights compressed by NNCF (``nncf.compress_weights``, weight-only: int8
per-channel, or int4 in groups with ``ratio=1.0``; NNCF keeps the embedding, tied to the LM
head, in int8_asym unless ``all_layers``), run by ``OVModelForCausalLM``: greedy prefill + decode
timed as ``torchslim.deploy.generate`` times torch and llama.cpp, and per-window NLLs of the same
windows. Imports neither torchslim nor the project's venv.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

# name -> nncf.compress_weights arguments (None: the fp32 export as it is)
VARIANTS: dict[str, dict[str, Any] | None] = {
    "openvino_fp32": None,
    "openvino_int8": {"mode": "INT8_ASYM"},
    "openvino_int4_asym_g64": {"mode": "INT4_ASYM", "group_size": 64, "ratio": 1.0},
    "openvino_int4_sym_g64": {"mode": "INT4_SYM", "group_size": 64, "ratio": 1.0},
}
# The CPU plugin would pick bf16 on this AMX CPU; compiling this model in bf16 dies with SIGFPE
# in this container (as llama.cpp's AMX kernels segfault), so every variant runs with f32
# inference precision. The fp32 variant also keeps its KV cache in f32 (the plugin's default is
# f16); the compressed ones keep the plugin's defaults (KV cache, dynamic activation
# quantization of the compressed matmuls), recorded per row.
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
FP32_EXTRA = {"KV_CACHE_PRECISION": "f32"}
REPORTED = ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE",
            "INFERENCE_NUM_THREADS", "NUM_STREAMS")  # fmt: skip


def export_fp32(hf_dir: Path, target: Path) -> float:
    """optimum-intel's stateful export of ``hf_dir`` into ``target`` (cached); its seconds."""
    from optimum.intel import OVModelForCausalLM

    if (target / "openvino_model.xml").is_file():
        return 0.0
    start = time.perf_counter()
    model = OVModelForCausalLM.from_pretrained(
        hf_dir, export=True, stateful=True, compile=False, load_in_8bit=False
    )
    model.save_pretrained(target)
    return time.perf_counter() - start


def compress(source: Path, target: Path, options: dict[str, Any]) -> dict[str, Any]:
    """``nncf.compress_weights`` of ``source``'s model into ``target`` (cached); its facts."""
    import nncf
    import openvino as ov

    facts_path = target / "compression.json"
    if facts_path.is_file():
        return json.loads(facts_path.read_text())
    start = time.perf_counter()
    model = ov.Core().read_model(source / "openvino_model.xml")
    arguments = {**options, "mode": getattr(nncf.CompressWeightsMode, options["mode"])}
    compressed = nncf.compress_weights(model, **arguments)
    seconds = time.perf_counter() - start
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("openvino_model.*"))
    ov.save_model(compressed, target / "openvino_model.xml", compress_to_fp16=False)
    facts = {"nncf_compress_weights": options, "nncf_version": nncf.__version__,
             "compress_seconds": round(seconds, 1)}  # fmt: skip
    facts_path.write_text(json.dumps(facts))
    return facts


def load(directory: Path, threads: int, extra: dict[str, Any]) -> Any:
    from optimum.intel import OVModelForCausalLM

    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1,
              "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": "", **F32, **extra}  # fmt: skip
    return OVModelForCausalLM.from_pretrained(directory, ov_config=config, compile=True)


def generate(model: Any, prompt: list[int], new_tokens: int) -> dict[str, Any]:
    """Greedy decoding on the stateful model: prompt in one call (it resets the state), then one
    token per call; the attention mask grows with the cache. Times as generate_torch does."""
    ids = torch.tensor([prompt])  # (1, T)
    start = time.perf_counter()
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
    prefill = time.perf_counter() - start
    new = [int(token)]
    start = time.perf_counter()
    for step in range(new_tokens - 1):
        mask = torch.ones(1, len(prompt) + step + 1, dtype=torch.int64)  # (1, T + step + 1)
        out = model(input_ids=token, attention_mask=mask, past_key_values=out.past_key_values)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        new.append(int(token))
    decode = time.perf_counter() - start
    return {"prefill_ms": 1000 * prefill, "decode_tokens_per_s": (new_tokens - 1) / decode,
            "new_tokens": new}  # fmt: skip


def time_runs(model: Any, prompt: list[int], new_tokens: int, repeats: int) -> dict[str, Any]:
    """One warm-up, then medians of ``repeats`` runs: the fields generate_llm.py writes, with
    each run's wall and process CPU seconds (the share of the shared core this process got)."""
    generate(model, prompt, new_tokens)
    results, wall, cpu = [], [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        results.append(generate(model, prompt, new_tokens))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    prefill = [r["prefill_ms"] for r in results]
    decode = [r["decode_tokens_per_s"] for r in results]
    return {
        "prefill_ms": round(statistics.median(prefill), 1),
        "decode_tokens_per_s": round(statistics.median(decode), 2),
        "prefill_ms_all": [round(v, 1) for v in prefill],
        "decode_tokens_per_s_all": [round(v, 2) for v in decode],
        "first_new_tokens": results[0]["new_tokens"][:8],
        "run_wall_s_all": [round(v, 2) for v in wall],
        "run_cpu_s_all": [round(v, 2) for v in cpu],
    }


def window_nlls(model: Any, windows: list[list[int]]) -> list[float]:
    """Mean next-token NLL of each window, each from a reset state (a call without a cache)."""
    losses = []
    for window in windows:
        ids = torch.tensor([window])  # (1, T)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]  # (T, V)
        losses.append(float(F.cross_entropy(logits[:-1].float(), ids[0, 1:])))
    return losses


def properties(model: Any) -> dict[str, str]:
    compiled = model.request.get_compiled_model()
    return {key: str(compiled.get_property(key)) for key in REPORTED}


def measure(name: str, inputs: dict[str, Any], work: Path) -> dict[str, Any]:
    fp32_dir = work / "openvino_fp32"
    seconds = export_fp32(Path(inputs["hf_dir"]), fp32_dir)
    facts: dict[str, Any] = {"export_seconds": round(seconds, 1)}
    options = VARIANTS[name]
    directory = fp32_dir if options is None else work / name
    if options is not None:
        facts.update(compress(fp32_dir, directory, options))
    model = load(directory, inputs["threads"], FP32_EXTRA if options is None else {})
    nlls = {text: window_nlls(model, windows) for text, windows in inputs["windows"].items()}
    speed = time_runs(model, inputs["prompt"], inputs["new_tokens"], inputs["repeats"])
    size = (directory / "openvino_model.bin").stat().st_size
    return {"file_mib": round(size / 2**20, 1), **speed, **facts,
            "runtime_properties": properties(model), "nlls": nlls}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--variant", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    inputs = json.loads(args.inputs.read_text())
    torch.set_num_threads(inputs["threads"])
    from importlib.metadata import version

    packages = ("openvino", "optimum-intel", "nncf", "transformers", "torch")
    row = measure(args.variant, inputs, Path(inputs["work"]))
    row["versions"] = {package: version(package) for package in packages}
    args.output.write_text(json.dumps(row))


if __name__ == "__main__":
    main()
