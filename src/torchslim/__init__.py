"""torchslim: measure what a neural network costs, compress it, and prove the result.

``torchslim.evaluate(model, task)`` is the function of the ``torchslim.evaluate`` package; the
package's other names stay importable as ``from torchslim.evaluate import ...``.
"""

from torchslim import zoo
from torchslim.errors import (
    ConfigError,
    InputShapeError,
    MissingAssetError,
    ModelLoadError,
    TorchslimError,
    UnknownModelError,
)
from torchslim.evaluate import EvaluationReport, evaluate
from torchslim.profile import ProfileReport, profile
from torchslim.train import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "EvaluationReport",
    "InputShapeError",
    "MissingAssetError",
    "ModelLoadError",
    "ProfileReport",
    "TorchslimError",
    "TrainConfig",
    "Trainer",
    "UnknownModelError",
    "__version__",
    "evaluate",
    "profile",
    "zoo",
]
