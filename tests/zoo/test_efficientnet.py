import pytest
import torch

from torchslim import zoo
from torchslim.zoo import _assets, efficientnet

# ImageNet classes of photos whose subject is obvious, and their index in efficientnet.EVAL_PHOTOS
OBVIOUS = {"apple.jpg": 948, "baboon.jpg": 372, "orange.jpg": 950, "squirrel_cls.jpg": 335}


@pytest.mark.assets
def test_photos_split_into_disjoint_eval_and_calibration_crops():
    assert not set(efficientnet.EVAL_PHOTOS) & set(efficientnet.CALIBRATION_PHOTOS)
    assert set(efficientnet.EVAL_PHOTOS) | set(efficientnet.CALIBRATION_PHOTOS) == set(
        _assets.OPENCV_PHOTOS
    )
    evaluated, calibration = efficientnet.photos("eval"), efficientnet.photos("calibration")
    assert evaluated.shape == (80, 3, 224, 224) and calibration.shape == (100, 3, 224, 224)
    assert float(evaluated.min()) >= -1.0 and float(evaluated.max()) <= 1.0  # (x - 127) / 128
    distances = torch.cdist(evaluated.flatten(1), calibration.flatten(1))  # (80, 100)
    assert float(distances.min()) > 1.0  # no eval crop reappears in calibration


@pytest.mark.assets
def test_inputs_and_calibration_batches_have_the_model_shape():
    entry = zoo.get("efficientnet-lite0")
    (images,) = entry.example_inputs(3)
    assert images.shape == (3, 3, 224, 224)
    batches = entry.calibration_batches(12)  # cycles past the 100 images
    assert [batch[0].shape for batch in batches] == [(10, 3, 224, 224)] * 12
    assert torch.equal(batches[10][0], batches[0][0])


@pytest.mark.slow  # 16-24 s on one core (make test-slow)
@pytest.mark.assets
def test_fp32_agrees_with_itself_and_a_perturbed_copy_does_not():
    entry = zoo.get("efficientnet-lite0")
    model = entry.load()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert entry.evaluate(model) == {
        "top1_agreement": 1.0,
        "kl_vs_fp32": pytest.approx(0, abs=1e-6),
    }
    centre_crops = efficientnet.photos("eval")[::5]  # (16, 3, 224, 224)
    with torch.no_grad():
        predicted = model(centre_crops).argmax(-1)
        for name, label in OBVIOUS.items():
            assert int(predicted[efficientnet.EVAL_PHOTOS.index(name)]) == label, name
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05 * parameter.std())
    perturbed = entry.evaluate(model)
    assert perturbed["top1_agreement"] < 1.0 and perturbed["kl_vs_fp32"] > 0.01
