"""Quantization math: round-trip bounds, SQNR thresholds, STE, packing, non-uniform quantizers."""

from __future__ import annotations

import math

import pytest
import torch

from torchslim.quantize import (
    QuantFormat,
    binary_dequantize,
    binary_quantize,
    cast_round_trip,
    compute_qparams,
    compute_scale_zero_point,
    dequantize,
    fake_quantize,
    kmeans_dequantize,
    kmeans_quantize,
    pack_bits,
    pack_int4,
    packed_size,
    pow2_dequantize,
    pow2_quantize,
    quantize,
    quantize_dequantize,
    reduce_min_max,
    sqnr_db,
    ternary_dequantize,
    ternary_quantize,
    unpack_bits,
    unpack_int4,
)

torch.set_num_threads(1)


def gaussian(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def format_sqnr(weight: torch.Tensor, name: str) -> float:
    return sqnr_db(weight, quantize_dequantize(weight, QuantFormat.parse(name)))


@pytest.mark.parametrize("name", ["int8", "int8-tensor", "uint8", "int4", "uint4-g32", "int3"])
def test_round_trip_error_is_at_most_half_a_step_inside_the_range(name: str) -> None:
    fmt = QuantFormat.parse(name)
    x = gaussian(32, 128) * 2  # (32, 128)
    low, high = reduce_min_max(x, fmt)
    scale, zero_point = compute_qparams(low, high, fmt)
    approx = fake_quantize(x, fmt, scale, zero_point)  # (32, 128)
    if fmt.granularity == "group":  # compare in the grouped view the scales belong to
        x, approx = x.reshape(32, -1, 32), approx.reshape(32, -1, 32)
    float_slack = 1e-6 * x.abs()  # float32 rounding of scale * code
    assert torch.all((x - approx).abs() <= scale / 2 + float_slack)


def test_quantize_clamps_out_of_range_values_to_the_end_codes() -> None:
    scale, zero_point = compute_scale_zero_point(torch.tensor(-1.0), torch.tensor(1.0), 8, True)
    codes = quantize(torch.tensor([-5.0, 0.0, 5.0]), scale, zero_point, -128, 127)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [-128, 0, 127]
    assert dequantize(codes, scale, zero_point)[1].item() == 0.0


@pytest.mark.parametrize(
    ("low", "high", "symmetric"),
    [(0.0, 0.0, True), (0.0, 0.0, False), (3.0, 3.0, False), (-2.0, -2.0, True),
     (1e-30, 1e-30, False)],
)  # fmt: skip
def test_degenerate_ranges_give_finite_scales_and_exact_zero(
    low: float, high: float, symmetric: bool
) -> None:
    scale, zero_point = compute_scale_zero_point(
        torch.tensor(low), torch.tensor(high), 8, symmetric
    )
    assert torch.isfinite(scale) and scale > 0
    qmin, qmax = (-128, 127) if symmetric else (0, 255)
    assert qmin <= zero_point.item() <= qmax
    values = torch.tensor([0.0, low, high])
    approx = dequantize(quantize(values, scale, zero_point, qmin, qmax), scale, zero_point)
    assert torch.isfinite(approx).all()
    assert approx[0].item() == 0.0  # zero is exactly representable
    assert torch.all((approx - values).abs() <= scale / 2 + 1e-6 * values.abs())


def test_uniform_sqnr_thresholds_and_ordering_on_a_gaussian_weight() -> None:
    weight = gaussian(64, 256)
    int8, int4, int2 = (format_sqnr(weight, n) for n in ("int8", "int4", "int2"))
    int4_g32 = format_sqnr(weight, "int4-g32")
    assert int8 > 40.0  # measured 43.0 dB
    assert int4_g32 > 18.0  # measured 20.5 dB
    assert int8 > int4 > int2
    assert int4_g32 > int4  # smaller groups, tighter ranges


def test_float_format_sqnr_in_measured_ranges() -> None:
    weight = gaussian(64, 256)
    e4m3, e5m2 = format_sqnr(weight, "fp8-e4m3"), format_sqnr(weight, "fp8-e5m2")
    bf16, fp16 = format_sqnr(weight, "bf16"), format_sqnr(weight, "fp16")
    assert 29.0 < e4m3 < 34.0  # measured 31.6 dB: 3 mantissa bits
    assert 23.0 < e5m2 < 28.0  # measured 25.6 dB: 2 mantissa bits
    assert 50.0 < bf16 < 60.0  # measured 55.6 dB
    assert fp16 > 70.0  # measured 73.7 dB
    fp8 = QuantFormat.parse("fp8-e4m3")
    scale, _ = compute_qparams(*reduce_min_max(weight, fp8), fp8)
    assert scale.item() == pytest.approx(weight.abs().max().item() / 448.0)


def test_float_casts_saturate_instead_of_overflowing() -> None:
    big = torch.tensor([1e6, -1e6, 1.0])
    assert cast_round_trip(big, torch.float16).tolist() == [65504.0, -65504.0, 1.0]
    fp8 = QuantFormat.parse("fp8-e4m3")
    out = fake_quantize(big, fp8, torch.tensor(1.0), torch.tensor(0, dtype=torch.int32))
    assert out.tolist() == [448.0, -448.0, 1.0]


def test_fake_quantize_matches_torch_forward_and_straight_through_gradient() -> None:
    fmt = QuantFormat.parse("uint8-tensor")
    x = (gaussian(16, 64) * 3).requires_grad_()  # values well outside [-2, 4]
    x_torch = x.detach().clone().requires_grad_()
    scale, zero_point = compute_qparams(torch.tensor(-2.0), torch.tensor(4.0), fmt)
    ours = fake_quantize(x, fmt, scale, zero_point)
    reference = torch.fake_quantize_per_tensor_affine(
        x_torch, scale.item(), int(zero_point), 0, 255
    )
    ours.sum().backward()
    reference.sum().backward()
    assert x.grad is not None and x_torch.grad is not None
    assert torch.equal(ours, reference) and torch.equal(x.grad, x_torch.grad)
    inside = (x > -2.0) & (x < 4.0)
    assert torch.all(x.grad[inside] == 1) and torch.all(x.grad[x.abs() > 5] == 0)
    assert 0 < x.grad.mean() < 1


def test_fake_quantize_per_channel_matches_torch() -> None:
    fmt = QuantFormat.parse("int4")
    weight = gaussian(16, 64).requires_grad_()
    weight_torch = weight.detach().clone().requires_grad_()
    scale, zero_point = compute_qparams(torch.full((16, 1), -1.0), torch.full((16, 1), 1.5), fmt)
    ours = fake_quantize(weight, fmt, scale, zero_point)
    reference = torch.fake_quantize_per_channel_affine(
        weight_torch, scale.flatten(), zero_point.flatten(), 0, -8, 7
    )
    (ours * 2).sum().backward()
    (reference * 2).sum().backward()
    assert torch.allclose(ours, reference, rtol=0, atol=1e-6)  # torch multiplies by 1/scale
    assert weight.grad is not None and weight_torch.grad is not None
    assert torch.equal(weight.grad, weight_torch.grad)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [False, True])
def test_pack_unpack_round_trip_is_exact_and_dense(bits: int, signed: bool) -> None:
    shape = (7, 13)  # 91 codes: not a multiple of 8
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    generator = torch.Generator().manual_seed(bits)
    codes = torch.randint(low, high, shape, generator=generator, dtype=torch.int16)
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == math.ceil(91 * bits / 8) == packed_size(91, bits)
    restored = unpack_bits(packed, bits, shape, signed=signed)
    assert torch.equal(restored.to(torch.int16), codes)


def test_int4_packs_two_codes_per_byte_low_nibble_first() -> None:
    codes = torch.randint(-8, 8, (64, 128), generator=torch.Generator().manual_seed(0))
    packed = pack_int4(codes)
    assert packed.numel() == codes.numel() // 2
    assert torch.equal(unpack_int4(packed, codes.shape, signed=True).long(), codes)
    assert pack_int4(torch.tensor([1, 2])).tolist() == [0x21]
    assert pack_bits(torch.arange(8), 3).numel() == 3  # 3-bit: 8 codes in 3 bytes


def test_pack_rejects_codes_that_do_not_fit_and_unpack_wrong_sizes() -> None:
    with pytest.raises(ValueError, match=r"do not fit 4 bits"):
        pack_bits(torch.tensor([0, 16]), 4)
    with pytest.raises(ValueError, match=r"do not fit 2 bits"):
        pack_bits(torch.tensor([-3, 1]), 2)
    with pytest.raises(ValueError, match=r"expects 2 uint8 bytes"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 4, (4,))


def test_binary_codes_are_signs_with_mean_abs_scale_per_channel() -> None:
    weight = gaussian(8, 32) * torch.arange(1, 9).float()[:, None]  # (8, 32)
    codes, scale = binary_quantize(weight, axis=0)
    assert set(codes.unique().tolist()) == {-1, 1}
    assert torch.equal(codes, torch.where(weight >= 0, 1, -1).to(torch.int8))
    assert torch.allclose(scale, weight.abs().mean(1, keepdim=True))
    error = (weight - binary_dequantize(codes, scale)).pow(2).sum()
    for factor in (0.9, 1.1):  # mean|w| is the least-squares scale
        assert error < (weight - binary_dequantize(codes, scale * factor)).pow(2).sum()
    _, tensor_scale = binary_quantize(weight, axis=None)
    assert tensor_scale.shape == () and tensor_scale.item() == pytest.approx(weight.abs().mean())


def test_ternary_codes_use_the_twn_threshold_and_scale() -> None:
    weight = gaussian(8, 64, seed=1)
    codes, scale = ternary_quantize(weight, axis=0)
    assert set(codes.unique().tolist()) == {-1, 0, 1}
    delta = 0.7 * weight.abs().mean(1, keepdim=True)
    assert torch.equal(codes == 0, weight.abs() <= delta)
    assert torch.equal(codes[codes != 0], torch.sign(weight)[codes != 0].to(torch.int8))
    kept = weight.abs() > delta
    expected = (weight.abs() * kept).sum(1, keepdim=True) / kept.sum(1, keepdim=True)
    assert torch.allclose(scale, expected)
    assert sqnr_db(weight, ternary_dequantize(codes, scale)) > format_sqnr(weight, "binary")


def test_pow2_values_are_signed_powers_of_two_within_the_code_width() -> None:
    weight = gaussian(16, 64, seed=2)
    codes, max_exponent = pow2_quantize(weight, bits=4, axis=0)
    assert codes.abs().max() <= 7 and max_exponent.shape == (16, 1)
    values = pow2_dequantize(codes, max_exponent)
    nonzero = values != 0
    log2 = values[nonzero].abs().log2()
    assert torch.equal(log2, log2.round())  # exact powers of two
    assert torch.all(torch.sign(values[nonzero]) == torch.sign(weight[nonzero]))
    assert nonzero.float().mean() > 0.9
    exponents_per_channel = [row[row != 0].abs().log2().unique().numel() for row in values]
    assert max(exponents_per_channel) <= 7
    assert 12.0 < sqnr_db(weight, values) < 17.0  # measured 14.4 dB (pow2-4 per channel)


def test_kmeans_codebook_beats_uniform_int4_on_a_bimodal_weight() -> None:
    generator = torch.Generator().manual_seed(3)
    modes = torch.randint(0, 2, (64, 128), generator=generator).float() * 6 - 3  # -3 or +3
    weight = modes + 0.5 * torch.randn(64, 128, generator=generator)  # (64, 128)
    codebook, indices = kmeans_quantize(weight, bits=4, seed=0)
    assert codebook.shape == (16,) and torch.equal(codebook, codebook.sort().values)
    assert indices.dtype == torch.uint8 and int(indices.max()) < 16
    again_codebook, again_indices = kmeans_quantize(weight, bits=4, seed=0)
    assert torch.equal(codebook, again_codebook) and torch.equal(indices, again_indices)
    kmeans = sqnr_db(weight, kmeans_dequantize(codebook, indices))
    uniform = format_sqnr(weight, "int4-tensor")
    assert kmeans > uniform + 3.0  # measured 29.3 vs 24.1 dB
    assert format_sqnr(weight, "kmeans-16") == pytest.approx(kmeans)


def test_kmeans_fits_a_seeded_sample_of_large_tensors() -> None:
    weight = gaussian(400, 400, seed=4)  # 160 000 values > sample_size
    codebook_a, _ = kmeans_quantize(weight, bits=3, seed=0, sample_size=10_000)
    codebook_b, _ = kmeans_quantize(weight, bits=3, seed=1, sample_size=10_000)
    assert not torch.equal(codebook_a, codebook_b)
    assert torch.allclose(codebook_a, codebook_b, atol=0.1)  # both near the gaussian optimum


def test_weight_only_kinds_pass_gradients_straight_through() -> None:
    weight = gaussian(8, 32).requires_grad_()
    for name in ("binary", "ternary", "pow2-4", "kmeans-4", "int4-g16"):
        weight.grad = None
        out = quantize_dequantize(weight, QuantFormat.parse(name))
        (out * 3).sum().backward()
        assert weight.grad is not None and torch.all(weight.grad == 3), name
        assert out.shape == weight.shape and out.dtype == weight.dtype


def test_sqnr_db_known_values() -> None:
    reference = gaussian(1000)
    assert sqnr_db(reference, reference) == math.inf
    assert sqnr_db(reference, 0.9 * reference) == pytest.approx(20.0)
    assert sqnr_db(reference, torch.zeros_like(reference)) == pytest.approx(0.0)
