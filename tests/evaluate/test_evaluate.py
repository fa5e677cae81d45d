import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from models import tiny_convnet, tiny_images
from torchslim.cli import app
from torchslim.errors import InputShapeError
from torchslim.evaluate import evaluate, parameter_count, peak_activation_bytes, saved_size_bytes
from torchslim.evaluate.latency import fixed_threads, measure_latency, summarize
from torchslim.zoo import ZooEntry


class TinyEntry(ZooEntry):
    name, task = "tiny-test", "image-classification"

    def __init__(self, shape=(1, 8, 8)):
        self.shape = shape

    def load(self):
        return tiny_convnet().eval()

    def example_inputs(self, batch_size=1):
        return (torch.randn(batch_size, *self.shape),)

    def calibration_batches(self, n):
        return [self.example_inputs(4) for _ in range(n)]

    def evaluate(self, model):
        x, y = tiny_images()
        with torch.no_grad():
            return {"accuracy": float((model(x).argmax(1) == y).float().mean())}


def test_report_follows_the_contract():
    entry = TinyEntry()
    report = evaluate(entry.load(), entry, batch_size=2, repeats=3).to_dict()
    assert set(report) >= {"model", "metrics", "params", "size_bytes", "latency_ms"}
    assert set(report["latency_ms"]) == {"median", "p90"}
    assert report["params"] == 4 * 9 + 4 + 8 + 16 * 3 + 3
    assert report["latency_ms"]["p90"] >= report["latency_ms"]["median"] > 0
    weights = report["details"]["weights_bytes"]
    assert report["peak_memory_bytes"] == weights + report["details"]["peak_activation_bytes"]
    assert 0 <= report["metrics"]["accuracy"] <= 1


def test_shape_the_model_rejects_is_one_clear_error():
    entry = TinyEntry(shape=(3, 8, 8))  # the model has one input channel
    expected = r"rejected inputs of shape \(1, 3, 8, 8\) float32: RuntimeError"
    with pytest.raises(InputShapeError, match=expected):
        evaluate(entry.load(), entry, repeats=3)


def test_peak_activation_of_a_linear_is_its_output():
    layer = nn.Linear(100, 200)
    x = torch.randn(8, 100)
    assert peak_activation_bytes(lambda: layer(x), [x, *layer.parameters()]) == 8 * 200 * 4


def test_peak_activation_counts_coexisting_tensors_and_frees_dead_ones():
    x, y = torch.randn(1000), torch.randn(1000)  # tensor operands: Python scalars would be
    # wrapped in 0-dim tensors, 4 more bytes each, which the allocator (rightly) sees

    def chain():
        a = x * y  # 4 000 bytes
        b = a + y  # a and b alive: 8 000
        del a
        c = b * y  # b and c alive: 8 000
        return c

    assert peak_activation_bytes(chain, [x, y]) == 8000


def test_peak_activation_includes_the_im2col_columns_of_a_native_convolution():
    conv = nn.Conv2d(4, 8, 3, padding=1, bias=False)
    x = torch.randn(1, 4, 10, 10)  # batch 1, tiny: ATen takes its native (im2col) kernel
    with fixed_threads(1):
        assert str(torch._C._select_conv_backend(x, conv.weight, None, [1, 1], [1, 1], [1, 1],
                                                 False, [0, 0], 1)).endswith("Slow2d")  # fmt: skip
        measured = peak_activation_bytes(lambda: conv(x), [x, *conv.parameters()])
    output, columns = 8 * 10 * 10 * 4, 4 * 3 * 3 * 10 * 10 * 4
    assert measured == output + columns


def test_size_and_parameter_count():
    model = nn.Linear(10, 10)
    assert parameter_count(model) == 110
    assert 440 < saved_size_bytes(model) < 440 + 300  # tensors + safetensors header


def test_shared_parameters_count_once():
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, layer)
    assert parameter_count(model) == 20


def test_latency_statistics():
    stats = summarize([float(v) for v in range(1, 11)])
    assert stats.median == 5.5 and stats.p90 == 9.0 and stats.min == 1.0 and stats.repeats == 10
    assert stats.iqr == pytest.approx(8.25 - 2.75) and summarize([3.0]).iqr == 0.0
    measured = measure_latency(lambda: sum(range(1000)), warmup=1, repeats=5)
    assert measured.repeats == 5 and measured.min <= measured.median <= measured.p90


def test_cli_unknown_model_suggests_the_close_name():
    result = CliRunner().invoke(app, ["evaluate", "mnist-cnm", "--json"])
    assert result.exit_code != 0
    assert 'Did you mean "mnist-cnn"' in str(result.exception)


def test_cli_version_and_help():
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.startswith("torchslim 0.")
    help_text = runner.invoke(app, ["--help"]).output
    for command in ("evaluate", "train", "zoo", "fetch"):
        assert command in help_text


@pytest.mark.assets
def test_cli_evaluate_json_mnist_cnn():
    result = CliRunner().invoke(app, ["evaluate", "mnist-cnn", "--json", "--repeats", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["model"] == "mnist-cnn"
    assert report["metrics"]["accuracy"] == pytest.approx(0.970, abs=0.002)
    assert report["params"] == 390_410


def test_cli_evaluates_a_user_factory_with_weights(tmp_path):
    from torchslim._io import save_tensors
    from zoo.user_factories import small_convnet

    weights = tmp_path / "w.safetensors"
    save_tensors(weights, small_convnet().state_dict())
    spec = "tests.zoo.user_factories:small_convnet"
    args = ["evaluate", spec, "--weights", str(weights), "--input-shape", "1,3,8,8", "--json"]
    result = CliRunner().invoke(app, [*args, "--repeats", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # the synthetic-data note goes to stderr
    assert report["params"] == 122 and report["metrics"]["output_finite"] == 1.0
    assert report["metrics"]["cosine"] == pytest.approx(1.0)  # the original, against itself
    wrong = CliRunner().invoke(app, [*args[:4], "--input-shape", "1,1,8,8", "--json"])
    assert wrong.exit_code != 0 and "rejected inputs of shape (1, 1, 8, 8)" in str(wrong.exception)


@pytest.mark.assets
def test_cli_evaluate_json_fashion_resnet20_reaches_its_committed_accuracy():
    result = CliRunner().invoke(app, ["evaluate", "fashion-resnet20", "--json", "--repeats", "3"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["metrics"]["accuracy"] == pytest.approx(0.9395, abs=0.0005)
    assert report["params"] == 272_186
    assert 272_186 * 4 < report["size_bytes"] < 272_186 * 4 * 1.1


def test_a_model_held_in_python_is_evaluated_on_its_example_inputs():
    import torchslim
    from torchslim.zoo.user import entry_for_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    inputs = torch.randn(3, 8)
    report = torchslim.evaluate(model, inputs, repeats=3)
    assert report.details["batch_size"] == 3 and report.metrics["cosine"] == pytest.approx(1.0)
    changed = torch.nn.Sequential(*[layer for layer in model])  # same layers...
    changed[0] = torch.nn.Linear(8, 16)  # ...but the first one re-initialised
    compared = torchslim.evaluate(changed, entry_for_model(model, inputs), repeats=3)
    assert compared.metrics["cosine"] < 0.999 and compared.metrics["max_abs_error"] > 0
