"""``torchslim generate``: greedy generation with a KV cache, timed (prefill ms, decode tok/s).

MODEL is a zoo causal LM (torch eager on --device), a .gguf file (llama.cpp, CPU), e.g. one
written by ``torchslim.deploy.gguf_llama.export_gguf`` from a GPTQ/AWQ-quantized model, or the
artifact directory of a recipe's ``gguf`` step (its ``model.gguf``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchslim._cli_options import DeviceOption, ThreadsOption


def generate_command(
    model: Annotated[
        str,
        typer.Argument(help="Zoo causal LM (smollm2-135m), a .gguf file or a GGUF artifact."),
    ],
    prompt: Annotated[str, typer.Option(help="Text to continue.")],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Tokens generated (greedy).")] = 64,
    threads: ThreadsOption = None,
    device: DeviceOption = "cpu",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Continue PROMPT greedily with a KV cache; print the text, prefill ms and decode tokens/s.

    Example: torchslim generate smollm2-135m --prompt "It was a fine morning" --max-new-tokens 32
    """
    import torch

    from torchslim.commands._render import _print_json, console
    from torchslim.deploy.generate import generate_llama_cpp, generate_torch, load_llama_cpp
    from torchslim.errors import ConfigError

    count = threads or torch.get_num_threads()
    model = _gguf_of_artifact(model)
    if model.endswith(".gguf"):
        if device != "cpu":
            raise ConfigError(f"a .gguf model runs on llama.cpp on the CPU: --device {device} "
                              "does not apply; leave it out")  # fmt: skip
        llm = load_llama_cpp(Path(model), count)
        ids = llm.tokenize(prompt.encode(), add_bos=False, special=False)
        result = generate_llama_cpp(llm, ids, max_new_tokens)
        text = llm.detokenize(result.new_tokens).decode(errors="replace")
    else:
        from torchslim import zoo
        from torchslim._devices import check_device

        entry = zoo.get(model)
        if entry.task != "causal-lm" or not hasattr(entry, "tokenizer"):
            raise ConfigError(f"{model} is not a causal LM with a tokenizer; generate takes "
                              "one (smollm2-135m) or a .gguf file")  # fmt: skip
        torch.set_num_threads(count)
        target = check_device(device)
        tokenizer = entry.tokenizer()
        lm = entry.load().to(target)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        result = generate_torch(lm, ids, max_new_tokens)
        text = tokenizer.decode(result.new_tokens)
    figures = {
        "runtime": result.runtime,
        "prompt_tokens": len(ids),
        "new_tokens": len(result.new_tokens),
        "prefill_ms": round(result.prefill_ms, 1),
        "decode_tokens_per_s": round(result.decode_tokens_per_s, 1),
        "threads": count,
    }
    if as_json:
        _print_json({**figures, "text": text})
        return
    console.print(prompt + text)
    console.print(", ".join(f"{k} {v}" for k, v in figures.items()), style="dim")


def _gguf_of_artifact(model: str) -> str:
    """A GGUF artifact directory's ``model.gguf`` (what llama.cpp runs), else ``model``."""
    from torchslim.deploy.llama_cpp_model import BACKEND, GGUF_NAME
    from torchslim.pipeline.artifact import read_manifest

    directory = Path(model)
    if not directory.is_dir():
        return model
    manifest = read_manifest(directory)
    if manifest is None:
        return model
    if manifest.get("backend") != BACKEND:
        from torchslim.errors import ConfigError

        raise ConfigError(
            f"{model} is a torchslim artifact without a GGUF (backend "
            f"{manifest.get('backend') or 'torch'}): generate runs a zoo causal LM, a .gguf "
            "file or a gguf step's artifact"
        )
    return str(directory / GGUF_NAME)
