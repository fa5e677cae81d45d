"""Packed storage: Huffman codes are prefix-free and round-trip, every layout round-trips bit for
bit (-0.0, NaN, bfloat16, int buffers, tied tensors, gaps longer than the index width), each
stream keeps its smallest coder, a corrupt file is refused by its checksum."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchslim.errors import ModelLoadError
from torchslim.pack import huffman, read_packed, write_packed
from torchslim.pack.format import encode_state
from torchslim.pack.layout import decode_tensor, encode_tensor


def test_huffman_codes_are_prefix_free_limited_and_round_trip() -> None:
    rng = np.random.default_rng(0)
    symbols = np.minimum(rng.geometric(0.05, 5000), 255)  # long tail: lengths hit the limit
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=256))
    assert lengths.max() <= huffman.MAX_BITS
    assert sum(2.0 ** -int(n) for n in lengths if n) <= 1.0  # Kraft: a prefix code exists
    codes = huffman.canonical_codes(lengths)
    words = [format(int(codes[s]), f"0{int(lengths[s])}b") for s in np.flatnonzero(lengths)]
    assert not any(a != b and b.startswith(a) for a in words for b in words)
    data = huffman.encode(symbols, lengths)
    assert np.array_equal(huffman.decode(data, lengths, len(symbols)), symbols)


def clustered_sparse(shape: tuple[int, int], density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codebook = torch.randn(16, generator=g)
    weight = codebook[torch.randint(0, 16, shape, generator=g)]
    return torch.where(torch.rand(shape, generator=g) < density, weight, torch.zeros(()))


def as_bits(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous().view(torch.uint8) if tensor.is_floating_point() else tensor


def test_every_layout_round_trips_bit_for_bit(tmp_path: Path) -> None:
    shared = torch.randn(8, 8)
    odd = torch.tensor([0.0, -0.0, float("nan"), 1.5, -2.0] * 20)  # -0.0 and NaN kept
    state = {
        "sparse": clustered_sparse((64, 64), 0.1),
        "codes": clustered_sparse((32, 32), 1.0),
        "raw": torch.randn(100),
        "odd": odd,
        "bf16": clustered_sparse((16, 16), 0.5).to(torch.bfloat16),
        "steps": torch.tensor(7),
        "tied_a": shared,
        "tied_b": shared,
    }
    records, _ = write_packed(tmp_path / "m.packed", state)
    layouts = {r["name"]: r.get("layout", "alias") for r in records}
    assert layouts["sparse"] == "sparse"
    assert layouts["codes"] == "codes" and layouts["raw"] == "raw"
    assert layouts["tied_b"] == "alias"
    loaded = read_packed(tmp_path / "m.packed")
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(as_bits(loaded[name]), as_bits(tensor)), name


def test_gaps_longer_than_the_index_width_are_bridged_by_fillers() -> None:
    lonely = torch.zeros(40_000)
    lonely[[3, 39_000]] = torch.tensor([0.5, -0.25])
    record, blocks = encode_tensor(lonely, coders=("huffman",))
    assert record["layout"] == "sparse" and record["index_bits"] <= 8
    assert record["streams"][0]["count"] > 2  # fillers: 39 000 zeros cannot fit one 8-bit gap
    assert torch.equal(as_bits(decode_tensor(record, blocks)), as_bits(lonely))


def test_each_stream_keeps_its_smallest_coder_and_sparse_beats_fp32_by_far() -> None:
    weight = clustered_sparse((128, 128), 0.05)
    record, blocks = encode_tensor(weight)
    assert record["layout"] == "sparse"
    for stream in record["streams"]:
        assert stream["bytes"] == min(stream["sizes"].values())
        assert {"huffman", "fixed"} <= set(stream["sizes"])
    assert sum(len(b) for b in blocks) < weight.numel() * 4 / 20


def test_without_entropy_coders_streams_are_fixed_width() -> None:
    record, _ = encode_tensor(clustered_sparse((64, 64), 0.1), coders=())
    assert [s["coder"] for s in record["streams"]] == ["fixed", "fixed"]


@pytest.mark.parametrize("where", [100, -5])
def test_a_corrupt_or_truncated_file_is_refused_by_its_checksum(tmp_path: Path, where: int) -> None:
    data, *_ = encode_state({"w": clustered_sparse((32, 32), 0.2)})
    broken = bytearray(data)
    broken[where] ^= 0x01
    (tmp_path / "bad.packed").write_bytes(bytes(broken))
    with pytest.raises(ModelLoadError, match="checksum"):
        read_packed(tmp_path / "bad.packed")
    (tmp_path / "short.packed").write_bytes(data[:-10])
    with pytest.raises(ModelLoadError, match="checksum"):
        read_packed(tmp_path / "short.packed")
    (tmp_path / "other.packed").write_bytes(b"not a packed file")
    with pytest.raises(ModelLoadError, match="not a torchslim packed file"):
        read_packed(tmp_path / "other.packed")
