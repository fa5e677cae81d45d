"""Greedy text generation with a KV cache, timed as LLM runtimes report it: prefill (the prompt
in one pass) in ms and decode (one token per step) in tokens/s, batch 1.

Two runtimes: torch eager on a transformers causal LM (any device, the cache is transformers'
DynamicCache), and llama.cpp (through llama-cpp-python) on a GGUF file, CPU. Both take and
return token ids, so the same prompt runs on both; ``max_new_tokens`` are always generated
(end-of-sequence tokens do not stop the loop) so the decode figures count the same work.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from torchslim.deploy.config import BackendUnavailableError
from torchslim.errors import ConfigError
from torchslim.evaluate.latency import clock_function, synchronize


@dataclass(frozen=True)
class Generation:
    """Generated token ids and the timing of one greedy run."""

    new_tokens: list[int]
    prefill_ms: float
    decode_tokens_per_s: float
    runtime: str


def _causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside torchslim's ``CausalLM`` wrapper (or the model itself)."""
    inner = getattr(model, "model", None)
    return inner if inner is not None and hasattr(inner, "generation_config") else model


def _check(prompt: list[int], max_new_tokens: int) -> None:
    if not prompt:
        raise ConfigError("the prompt has no tokens: give a non-empty --prompt")
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens={max_new_tokens}; allowed: >= 1")


def generate_torch(
    model: nn.Module, prompt: list[int], max_new_tokens: int, clock: str = "wall"
) -> Generation:
    """Greedy decoding on torch eager with transformers' KV cache, timed on ``clock``
    (``evaluate.latency.clock_function``)."""
    _check(prompt, max_new_tokens)
    now = clock_function(clock)
    lm = _causal_lm(model).eval()
    device = next(lm.parameters()).device
    ids = torch.tensor([prompt], device=device)  # (1, T)
    with torch.no_grad():
        start = now()
        out = lm(input_ids=ids, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
        synchronize(device)
        prefill = now() - start
        cache, new = out.cache, [int(token)]  # transformers 5: ``cache`` (was past_key_values)
        start = now()
        for _ in range(max_new_tokens - 1):
            out = lm(input_ids=token, cache=cache, use_cache=True)
            cache, token = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
            new.append(int(token))  # int() syncs the device
        decode = now() - start
    return Generation(new, 1000 * prefill, _rate(max_new_tokens - 1, decode), "torch-eager")


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if seconds > 0 else math.inf


def load_llama_cpp(path: Path, threads: int, context: int = 1024, all_logits: bool = False) -> Any:
    """A llama-cpp-python ``Llama`` on ``path`` (quiet), the file checked first
    (``check_gguf``: ModelLoadError for a missing, foreign, too new or truncated file);
    BackendUnavailableError without llama-cpp-python."""
    from torchslim.deploy.gguf_file import check_gguf

    try:
        from llama_cpp import Llama
    except ImportError as error:
        raise BackendUnavailableError(
            "llama.cpp runs GGUF files through llama-cpp-python: pip install 'torchslim[llamacpp]'"
        ) from error
    check_gguf(path)
    with _no_extra_buffer_types():
        return Llama(
            model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
            n_batch=context, logits_all=all_logits, verbose=False,
        )  # fmt: skip


@contextmanager
def _no_extra_buffer_types() -> Iterator[None]:
    """Load with llama.cpp's extra CPU buffer types off (``use_extra_bufts``: the AMX and
    repacked-weight kernels). A native build on an AMX CPU segfaults in
    ggml_backend_amx_mul_mat in this container; llama-cpp-python does not expose the switch,
    so its default model params are wrapped while the model loads."""
    import llama_cpp.llama_cpp as native

    default = native.llama_model_default_params

    def without_extra() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    native.llama_model_default_params = without_extra
    try:
        yield
    finally:
        native.llama_model_default_params = default


def generate_llama_cpp(
    llm: Any, prompt: list[int], max_new_tokens: int, clock: str = "wall"
) -> Generation:
    """Greedy decoding on llama.cpp: the prompt in one ``eval``, then one token per ``eval``;
    timed on ``clock`` ("thread_cpu" counts only with one llama.cpp thread, which computes on the
    calling thread)."""
    _check(prompt, max_new_tokens)
    now = clock_function(clock)
    llm.reset()
    start = now()
    llm.eval(prompt)
    token = int(_last_logits(llm).argmax())
    prefill = now() - start
    new = [token]
    start = now()
    for _ in range(max_new_tokens - 1):
        llm.eval([token])
        token = int(_last_logits(llm).argmax())
        new.append(token)
    decode = now() - start
    return Generation(new, 1000 * prefill, _rate(max_new_tokens - 1, decode), "llama.cpp")


def _last_logits(llm: Any) -> np.ndarray:
    """The last evaluated token's logits, (V,), read from the llama.cpp context: llama-cpp-python
    0.3 fills ``llm.scores`` only when it keeps every position's logits (``all_logits``), so
    without it the row read before was all zeros and every greedy token came out as id 0."""
    import llama_cpp

    row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(row, shape=(llm.n_vocab(),))


def llama_cpp_window_nlls(llm: Any, windows: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each window (N, T) on llama.cpp, as ``zoo.text.window_nlls``
    computes it on torch: (N,). ``llm`` must keep every position's logits (``all_logits``)."""
    losses = []
    for window in windows.tolist():
        llm.reset()
        llm.eval(window)
        logits = torch.from_numpy(llm.scores[: len(window)].copy()).float()  # (T, V)
        target = torch.tensor(window[1:])
        losses.append(float(F.cross_entropy(logits[:-1], target)))
    return torch.tensor(losses, dtype=torch.float64)
