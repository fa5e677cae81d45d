"""torchslim: measure what a neural network costs, compress it, and prove the result.

``torchslim.evaluate(model, task)`` is the function of the ``torchslim.evaluate`` package; the
package's other names stay importable as ``from torchslim.evaluate import ...``.
"""

from torchslim import zoo
from torchslim.distill import DistillConfig, Distiller, KDLoss, LayerMatch
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
from torchslim.prune import NMPruneConfig, StructuredPruneConfig, UnstructuredPruneConfig, prune_
from torchslim.quantize import QuantConfig, quantize_
from torchslim.train import TrainConfig, Trainer

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DistillConfig",
    "Distiller",
    "EvaluationReport",
    "InputShapeError",
    "KDLoss",
    "LayerMatch",
    "MissingAssetError",
    "ModelLoadError",
    "NMPruneConfig",
    "ProfileReport",
    "QuantConfig",
    "StructuredPruneConfig",
    "TorchslimError",
    "TrainConfig",
    "Trainer",
    "UnknownModelError",
    "UnstructuredPruneConfig",
    "__version__",
    "evaluate",
    "profile",
    "prune_",
    "quantize_",
    "zoo",
]
