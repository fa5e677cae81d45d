"""A GGUF file on llama.cpp as a torchslim runtime: ``forward(input_ids)`` returns logits, so the
zoo's perplexity runs on llama.cpp's own kernels; ``artifact`` holds the file for ``save``, and
``load_artifact`` builds the runtime again from a saved artifact directory."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.deploy._runtime import file_digests, read_files
from torchslim.deploy.gguf_file import check_gguf
from torchslim.errors import ConfigError

GGUF_NAME = "model.gguf"
CONTEXT = 512  # tokens llama.cpp keeps (the zoo's perplexity windows are 512 tokens)
BACKEND = "llama.cpp"


class LlamaCppModel(nn.Module):
    """llama.cpp (llama-cpp-python) running one GGUF file, batch rows one after another.

    Args:
        gguf: the file's bytes (what ``save`` writes).
        threads: llama.cpp's threads (``n_threads`` and ``n_threads_batch``), fixed when built.
        context: tokens per evaluated row at most.
        path: a file holding exactly ``gguf`` that llama.cpp reads (a loaded artifact's);
            default: a temporary copy that lives as long as the model.
    """

    def __init__(
        self, gguf: bytes, threads: int, context: int = CONTEXT, path: Path | None = None
    ) -> None:
        super().__init__()
        from torchslim.deploy.generate import load_llama_cpp

        self.artifact = {GGUF_NAME: gguf}
        self.threads, self.context = threads, context
        if path is None:
            self._file = tempfile.NamedTemporaryFile(suffix=".gguf")  # noqa: SIM115 (lives with self)
            self._file.write(gguf)
            self._file.flush()
            path = Path(self._file.name)
        self.header = check_gguf(path)
        self.llm: Any = load_llama_cpp(path, threads, context, all_logits=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in input_ids.tolist():  # (T,) each
            self.llm.reset()
            self.llm.eval(row)
            rows.append(torch.from_numpy(self.llm.scores[: len(row)].copy()))  # (T, V)
        return torch.stack(rows).float()  # (B, T, V)

    def saved_size_bytes(self) -> int:
        return len(self.artifact[GGUF_NAME])

    def parameter_count(self) -> int:
        """Elements of every tensor in the GGUF (a tied output layer is stored once)."""
        return self.header.parameters

    def manifest(self) -> dict[str, Any]:
        from torchslim._compress import versions

        return {
            "backend": BACKEND,
            "files": file_digests(self.artifact),
            "settings": {"threads": self.threads, "context": self.context},
            "versions": versions(),
        }


def load_artifact(
    directory: Path, manifest: dict[str, Any], threads: int | None, device: str
) -> LlamaCppModel:
    """The runtime of a saved GGUF artifact: the file checked (``check_gguf``, then its
    checksum), llama.cpp reading it in place with ``threads`` (default: the recorded ones).

    Raises:
        ConfigError: a ``device`` other than the CPU (this llama.cpp build runs on the CPU).
        ModelLoadError: a missing, foreign, too new or truncated GGUF file.
        DeployError: a file that does not match its checksum in the manifest.
    """
    if torch.device(device).type != "cpu":
        raise ConfigError(
            f"{directory} runs on llama.cpp on the CPU: device {device!r} does not apply; "
            "leave it out (or use --device cpu)"
        )
    check_gguf(directory / GGUF_NAME)  # says "truncated" where the checksum would only differ
    artifact = read_files(directory, manifest)
    settings = manifest.get("settings", {})
    count = threads or int(settings.get("threads", 2))
    context = int(settings.get("context", CONTEXT))
    return LlamaCppModel(artifact[GGUF_NAME], count, context, path=directory / GGUF_NAME)
