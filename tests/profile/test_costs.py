"""Golden counts: hand-computed MACs/FLOPs/bytes per op family, and FlopCounterMode agreement."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from torchslim.errors import InputShapeError
from torchslim.profile import profile


def counts(fn, *inputs):
    class Wrapper(nn.Module):
        def forward(self, *args):
            return fn(*args)

    return profile(Wrapper(), inputs, measure_memory=False)


def torch_flops(fn, *inputs):
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*inputs)
    return counter.get_total_flops()


CONV_CASES = [
    # (C_in, C_out, k, stride, padding, dilation, groups, H)
    (3, 8, 3, 1, 1, 1, 1, 10),
    (3, 8, 3, 2, 0, 1, 1, 11),
    (4, 8, 3, 1, 2, 2, 1, 9),
    (8, 8, 3, 1, 1, 1, 8, 7),  # depthwise
    (8, 16, 1, 1, 0, 1, 2, 5),  # grouped 1x1
    (4, 6, (3, 5), (2, 1), (1, 2), 1, 2, 12),
]


@pytest.mark.parametrize(("c_in", "c_out", "k", "stride", "pad", "dil", "groups", "h"), CONV_CASES)
def test_conv2d_macs_are_output_elements_times_kernel_volume(
    c_in, c_out, k, stride, pad, dil, groups, h
):
    conv = nn.Conv2d(c_in, c_out, k, stride, pad, dil, groups, bias=False)
    x = torch.randn(2, c_in, h, h)
    out = conv(x)
    kh, kw = conv.kernel_size
    expected = out.numel() * (c_in // groups) * kh * kw
    report = counts(conv, x)
    assert report.total.macs == expected
    assert report.total.flops == 2 * expected
    assert report.total.flops == torch_flops(conv, x)
    record = report.records[0]
    assert record.cost.bytes_read == (x.numel() + conv.weight.numel()) * 4
    assert record.cost.bytes_written == out.numel() * 4


def test_depthwise_conv_is_its_own_latency_class():
    conv = nn.Conv2d(8, 8, 3, groups=8)
    report = counts(conv, torch.randn(1, 8, 6, 6))
    assert report.records[0].op_class == "conv_depthwise"


def test_conv_transpose_macs():
    conv = nn.ConvTranspose2d(4, 6, 3, stride=2, bias=False)
    x = torch.randn(1, 4, 5, 5)
    assert counts(conv, x).total.macs == x.numel() * 6 * 9
    assert counts(conv, x).total.flops == torch_flops(conv, x)


def test_linear_macs_bytes_and_intensity():
    layer = nn.Linear(64, 32)
    x = torch.randn(8, 64)
    report = counts(layer, x)
    assert report.total.macs == 8 * 64 * 32
    addmm = report.by_op()["addmm"]
    assert addmm.flops == 2 * 8 * 64 * 32 == torch_flops(layer, x)
    assert addmm.bytes_read == (8 * 64 + 64 * 32 + 32) * 4
    assert addmm.bytes_written == 8 * 32 * 4
    assert addmm.arithmetic_intensity == pytest.approx(addmm.flops / addmm.bytes)


def test_linear_on_3d_input_and_matmul_bmm_einsum():
    x = torch.randn(2, 5, 16)
    layer = nn.Linear(16, 8, bias=False)
    assert counts(layer, x).total.macs == 2 * 5 * 16 * 8
    a, b = torch.randn(3, 4, 6), torch.randn(3, 6, 7)
    assert counts(torch.matmul, a, b).total.macs == 3 * 4 * 6 * 7
    assert counts(torch.bmm, a, b).total.flops == torch_flops(torch.bmm, a, b)
    einsum = counts(lambda p, q: torch.einsum("bij,bjk->bik", p, q), a, b)
    assert einsum.total.macs == 3 * 4 * 6 * 7


def test_sdpa_counts_both_matmuls_and_the_softmax():
    q = torch.randn(2, 3, 10, 8)
    k = torch.randn(2, 3, 12, 8)
    v = torch.randn(2, 3, 12, 8)
    report = counts(F.scaled_dot_product_attention, q, k, v)  # one fused kernel
    macs = 2 * 3 * 10 * 12 * (8 + 8)  # QK^T and AV
    assert report.total.macs == macs
    assert report.total.flops == 2 * macs + 5 * 2 * 3 * 10 * 12
    assert report.unsupported_ops == {}


def test_sdpa_math_path_has_the_same_macs():
    q, k, v = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8), torch.randn(2, 3, 12, 4)
    report = counts(F.scaled_dot_product_attention, q, k, v)  # Ev != E: decomposed bmm + softmax
    assert report.total.macs == 2 * 3 * 10 * 12 * (8 + 4)
    assert report.unsupported_ops == {}


def test_layer_norm_batch_norm_softmax_per_element_conventions():
    x = torch.randn(4, 10, 16)
    assert counts(nn.LayerNorm(16), x).total.flops == 7 * x.numel()
    bn = nn.BatchNorm2d(3).eval()
    image = torch.randn(2, 3, 5, 5)
    assert counts(bn, image).total.flops == 4 * image.numel()
    assert counts(lambda t: torch.softmax(t, -1), x).total.flops == 5 * x.numel()
    for report in (counts(nn.LayerNorm(16), x), counts(bn, image)):
        assert report.total.macs == 0


def test_embedding_reads_only_the_rows_it_returns():
    table = nn.Embedding(1000, 32)
    ids = torch.randint(0, 1000, (2, 7))
    record = counts(table, ids).records[0]
    assert record.cost.flops == 0
    assert record.cost.bytes_written == 2 * 7 * 32 * 4
    assert record.cost.bytes_read == ids.numel() * 8 + 2 * 7 * 32 * 4  # not the whole table


def test_views_cost_nothing_and_broadcasts_are_counted_once():
    x = torch.randn(4, 8)
    assert counts(lambda t: t.view(2, 16).transpose(0, 1), x).total.bytes == 0
    row = torch.randn(8)
    record = counts(lambda t, r: t + r.expand(4, 8), x, row).by_op()["add"]
    assert record.bytes_read == (32 + 8) * 4


def test_real_dtypes_set_the_bytes():
    layer = nn.Linear(16, 16, bias=False).to(torch.bfloat16)
    x = torch.randn(4, 16, dtype=torch.bfloat16)
    assert counts(layer, x).by_op()["mm"].bytes_read == (4 * 16 + 16 * 16) * 2
    a = torch.randint(-128, 127, (32, 64), dtype=torch.int8)
    b = torch.randint(-128, 127, (64, 32), dtype=torch.int8)
    report = counts(torch._int_mm, a, b)
    assert report.total.macs == 32 * 64 * 32
    assert report.records[0].cost.bytes_read == 32 * 64 + 64 * 32


def test_unsupported_ops_are_listed_not_zeroed():
    report = counts(lambda t: torch.fft.rfft(t), torch.randn(16))
    assert report.unsupported_ops  # e.g. {'_fft_r2c': 1}
    assert all(r.cost is None for r in report.records if r.op in report.unsupported_ops)


def test_module_attribution_uses_state_dict_names():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 2)))
    report = profile(model, (torch.randn(1, 4),), measure_memory=False)
    by_module = report.by_module()
    assert by_module["0"].macs == 16 and by_module["2.0"].macs == 8
    assert report.by_module(depth=1)["2"].macs == 8


class _SharedBlock(nn.Module):
    """One Linear run three times, one tied to nothing: calls and params must not multiply."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.head = nn.Linear(4, 2)
        self.unused = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            x = torch.relu(self.shared(x))
        return self.head(x)


def test_modules_report_their_forward_calls_and_their_params():
    model = _SharedBlock()
    report = profile(model, (torch.randn(2, 4),), measure_memory=False)
    by_module = report.by_module()
    assert by_module["shared"].calls == 3 and by_module["head"].calls == 1
    assert by_module["shared"].params == 4 * 4 + 4 and by_module["head"].params == 4 * 2 + 2
    assert by_module["(model)"].calls == 1
    assert sum(t.params for t in report.by_op().values()) == 20 + 10  # each read once
    assert report.total.params == 20 + 10 + 20  # the unused Linear is still the model's
    assert report.by_op()["addmm"].calls == 4 and report.by_op()["addmm"].params > 0
    nested = profile(
        nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 2))), (torch.randn(1, 4),)
    )
    assert nested.by_module(depth=1)["1"].params == 10 and nested.by_module(depth=1)["1"].calls == 1


def test_peak_memory_follows_python_references_not_last_use():
    class KeepsItsInput(nn.Module):
        def forward(self, x):
            a = x * x  # 400 bytes, still referenced by `a` after its last use
            b = a * x  # a, b alive
            c = b * x  # a, b, c alive: 1200 bytes, where "freed after last use" says 800
            return c * x

    x = torch.randn(100)
    report = profile(KeepsItsInput(), (x,))
    assert report.predicted_peak_activation_bytes == 4 * 400
    assert report.measured_peak_activation_bytes == 4 * 400


def test_profile_names_the_layer_that_rejected_the_input():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    with pytest.raises(InputShapeError, match=r"\(1, 3, 8, 8\) float32 in '0' \(Conv2d, which "
                       r"expects \(N, 1, H, W\)"):  # fmt: skip
        profile(model, (torch.randn(1, 3, 8, 8),))
    with pytest.raises(InputShapeError, match=r"\(N, 1, H, W\)"):
        profile(model.to("meta"), (torch.randn(1, 3, 8, 8, device="meta"),))
    embedding = nn.Sequential(nn.Embedding(10, 4))
    with pytest.raises(InputShapeError, match=r"\(1, 5\) float32 .*integer token ids in \[0, 10\)"):
        profile(embedding, (torch.randn(1, 5),))
    assert embedding[0].weight.shape == (10, 4)  # the model is untouched


def test_meta_tensors_give_the_same_counts():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    real = profile(model, (x,))
    meta = profile(model.to("meta"), (x.to("meta"),))
    assert meta.total.macs == real.total.macs
    assert meta.measured_peak_activation_bytes is None
    # predicted from shapes and Python's references (and the conv's workspace measured alone):
    # the same on meta, and what the allocator really held in the real forward pass
    assert meta.predicted_peak_activation_bytes == real.predicted_peak_activation_bytes
    assert real.predicted_peak_activation_bytes == real.measured_peak_activation_bytes


def test_cifar_resnet18_at_32x32_is_about_0_56_gmacs():
    from tests_support_resnet18 import cifar_resnet18

    report = profile(cifar_resnet18().to("meta"), (torch.randn(1, 3, 32, 32, device="meta"),))
    assert report.total.macs == pytest.approx(0.556e9, rel=0.01)
    assert report.params == 11_173_962
