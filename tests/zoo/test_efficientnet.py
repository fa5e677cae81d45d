import pytest
import torch

from torchslim import zoo
from torchslim.zoo import efficientnet


@pytest.mark.assets
def test_photos_split_into_disjoint_eval_and_calibration_crops():
    assert efficientnet.photos("eval").shape == (60, 3, 224, 224)
    assert efficientnet.photos("calibration").shape == (30, 3, 224, 224)
    assert not set(efficientnet.EVAL_PHOTOS) & set(efficientnet.CALIBRATION_PHOTOS)


@pytest.mark.assets
def test_fp32_agrees_with_itself_and_a_perturbed_copy_does_not():
    entry = zoo.get("efficientnet-lite0")
    model = entry.load()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert entry.evaluate(model) == {
        "top1_agreement": 1.0,
        "kl_vs_fp32": pytest.approx(0, abs=1e-6),
    }
    (apple,) = entry.example_inputs(1)
    with torch.no_grad():
        assert int(model(apple).argmax()) == 948  # ImageNet "Granny Smith" for apple.jpg
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05 * parameter.std())
    perturbed = entry.evaluate(model)
    assert perturbed["top1_agreement"] < 1.0 and perturbed["kl_vs_fp32"] > 0.01
