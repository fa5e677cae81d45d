"""A GGUF file on llama.cpp as a torchslim runtime: ``forward(input_ids)`` returns logits, so the
zoo's perplexity runs on llama.cpp's own kernels; ``artifact`` holds the file for ``save``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.deploy._runtime import file_digests

GGUF_NAME = "model.gguf"


class LlamaCppModel(nn.Module):
    """llama.cpp (llama-cpp-python) running one GGUF file, batch rows one after another."""

    def __init__(self, gguf: bytes, threads: int, context: int = 512) -> None:
        super().__init__()
        from torchslim.deploy.generate import load_llama_cpp

        self.artifact = {GGUF_NAME: gguf}
        self.threads = threads
        self._file = tempfile.NamedTemporaryFile(suffix=".gguf")  # noqa: SIM115 (lives with self)
        self._file.write(gguf)
        self._file.flush()
        self.llm: Any = load_llama_cpp(Path(self._file.name), threads, context, all_logits=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in input_ids.tolist():  # (T,) each
            self.llm.reset()
            self.llm.eval(row)
            rows.append(torch.from_numpy(self.llm.scores[: len(row)].copy()))  # (T, V)
        return torch.stack(rows).float()  # (B, T, V)

    def saved_size_bytes(self) -> int:
        return len(self.artifact[GGUF_NAME])

    def manifest(self) -> dict[str, Any]:
        from torchslim._compress import versions

        return {
            "backend": "llama.cpp",
            "files": file_digests(self.artifact),
            "settings": {"threads": self.threads},
            "versions": versions(),
        }
