"""``pack_model``: a model's weights into one packed file, with the size of every layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchslim.errors import ConfigError
from torchslim.pack.format import read_packed, write_packed
from torchslim.pack.streams import CODERS


@dataclass(frozen=True)
class PackConfig:
    """``coders``: the entropy coders a stream may use (``huffman``, ``zstd``); fixed-width bit
    packing is always a candidate, and each stream keeps the smallest."""

    coders: tuple[str, ...] = ("huffman", "zstd")

    def __post_init__(self) -> None:
        unknown = [c for c in self.coders if c not in CODERS]
        if unknown:
            raise ConfigError(f"coders must be among {list(CODERS[:2])}, got {unknown}")


@dataclass
class PackResult:
    """The packed file, its size, the dense size of the same tensors, bytes per layer (a shared
    codebook not included), the layout of every tensor and the shared codebooks (``tensors``,
    ``entries``, ``bytes``: counted once, beside the layers)."""

    path: Path
    bytes: int
    dense_bytes: int
    layers: dict[str, int] = field(default_factory=dict)
    tensors: list[dict[str, Any]] = field(default_factory=list)
    codebooks: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        layouts: dict[str, int] = {}
        for record in self.tensors:
            layouts[record.get("layout", "alias")] = (
                layouts.get(record.get("layout", "alias"), 0) + 1
            )
        return {
            "packed_bytes": self.bytes,
            "dense_bytes": self.dense_bytes,
            "ratio": round(self.dense_bytes / max(self.bytes, 1), 2),
            "layouts": layouts,
            "bytes_per_layer": self.layers,
            "shared_codebooks": self.codebooks,
            "tensors": {r["name"]: _brief(r) for r in self.tensors},
        }


def pack_model(
    model: nn.Module,
    path: str | Path,
    config: PackConfig | None = None,
    codebook_groups: Sequence[Sequence[str]] = (),
) -> PackResult:
    """Write ``model``'s state dict packed to ``path`` (pass a model with masks and fake-quant
    layers folded: ``torchslim.pipeline.artifact.storable``). ``codebook_groups``: names of
    tensors that share one codebook, stored once (``torchslim.share.codebook_groups`` of the
    clustered model)."""
    config = config or PackConfig()
    state = model.state_dict()
    records, codebooks = write_packed(path, state, tuple(config.coders), codebook_groups)
    layers: dict[str, int] = {}
    for record in records:
        layer = record["name"].rpartition(".")[0] or record["name"]
        layers[layer] = layers.get(layer, 0) + int(record["bytes"])
    dense = sum(
        t.numel() * t.element_size()
        for r, t in zip(records, state.values(), strict=True)
        if "alias_of" not in r
    )
    size = Path(path).stat().st_size
    return PackResult(Path(path), size, dense, layers, records, codebooks)


def unpack_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a packed file (bit-exact; raises ModelLoadError on a bad checksum)."""
    return read_packed(path)


def _brief(record: dict[str, Any]) -> dict[str, Any]:
    if "alias_of" in record:
        return {"alias_of": record["alias_of"]}
    brief = {"layout": record["layout"], "bytes": record["bytes"],
             "layout_sizes": record["layout_sizes"]}  # fmt: skip
    if "codebook_ref" in record:
        brief["codebook_ref"] = record["codebook_ref"]
    if "index_bits" in record:
        brief["index_bits"] = record["index_bits"]
    brief["coders"] = [s["coder"] for s in record["streams"]]
    brief["coder_sizes"] = [s["sizes"] for s in record["streams"]]
    return brief
