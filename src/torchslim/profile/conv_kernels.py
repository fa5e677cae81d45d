"""Which CPU kernel torch runs a float32 conv on, and the channel counts that kernel really pays.

torch (ATen ``ConvParams::use_mkldnn``, unchanged from 2.0 to 2.13) sends a float32 CPU conv to
oneDNN unless it is small and single-image: at batch 1 a 3x3 (or 1x1) non-grouped conv whose input
holds at most 20 480 values runs ``_slow_conv2d_forward`` (im2col + GEMM), which costs about its
MACs. oneDNN blocks channels by the SIMD width (16 float32 lanes with AVX-512, 8 with AVX2), so
there a conv costs what its channel counts rounded up to that block cost: on one shared Xeon
core at batch 16, 14x14, 3x3, 16->16 channels took 0.18 ms, 17->16 0.27 ms, 32->16 0.30 ms,
16->17 0.27 ms, 16->32 0.31 ms (benchmarks/results/prune_speed-resnet-multibatch.json,
``conv_kernels``; at 28x28 that probe was too noisy to read, a quieter one measured 0.48 ms for
16->16 and 1.65 ms for 17->17, as much as 32->32). Input channels of at most 4 (an image's first
layer) use oneDNN's plain-layout kernels and are not padded.
"""

from __future__ import annotations

import functools

import torch

SLOW_PATH_MAX_INPUT_VALUES = 20_480  # ATen: below this a batch-1 small-kernel conv stays native
PLAIN_INPUT_CHANNELS = 4  # oneDNN's first-layer kernels read up to this many channels unblocked


@functools.cache
def channel_block() -> int:
    """Channels oneDNN packs per SIMD register on this CPU (float32): 16 with AVX-512, else 8."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def runs_onednn(
    input_shape: tuple[int, ...], weight_shape: tuple[int, ...], threads: int, strided: bool
) -> bool:
    """Whether torch runs this float32 2-D conv on oneDNN (else on ``_slow_conv2d_forward``)."""
    if len(input_shape) != 4 or len(weight_shape) != 4:
        return False
    batch, channels, height, width = input_shape
    kernel_h, kernel_w = weight_shape[-2:]
    groups = max(channels // max(weight_shape[1], 1), 1)
    one_by_one = (kernel_h, kernel_w) == (1, 1)
    if not (strided or batch >= 16 or not one_by_one or threads > 1):
        return False
    return (
        groups > 1
        or (kernel_h > 3 and kernel_w > 3)
        or batch > 1
        or batch * channels * height * width > SLOW_PATH_MAX_INPUT_VALUES
    )


def padded_channels(channels: int, block: int) -> int:
    """``channels`` rounded up to a multiple of ``block``."""
    return -(-channels // block) * block


def onednn_work_factor(
    input_shape: tuple[int, ...], weight_shape: tuple[int, ...], threads: int, strided: bool
) -> float:
    """How many times its MACs a non-grouped conv pays on this CPU: the channel padding of
    oneDNN's blocked layout, or 1.0 where the conv runs natively or is grouped/depthwise."""
    if not runs_onednn(input_shape, weight_shape, threads, strided):
        return 1.0
    out_channels, in_channels = weight_shape[0], weight_shape[1]
    if in_channels != input_shape[1]:  # grouped: oneDNN blocks per group differently
        return 1.0
    block = channel_block()
    factor = padded_channels(out_channels, block) / out_channels
    if in_channels > PLAIN_INPUT_CHANNELS:
        factor *= padded_channels(in_channels, block) / in_channels
    return factor
