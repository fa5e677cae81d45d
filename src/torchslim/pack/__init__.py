"""Compressed storage (Deep Compression's last stages, arXiv 1510.00149): shared or quantized
weights as codebooks + codes, pruned ones as relative narrow indices, every stream coded by
Huffman or zstd (whichever is smaller), one checksummed file that loads back bit for bit."""

from torchslim.pack.apply import PackConfig, PackResult, pack_model, unpack_state
from torchslim.pack.format import read_packed, write_packed

__all__ = ["PackConfig", "PackResult", "pack_model", "read_packed", "unpack_state", "write_packed"]
