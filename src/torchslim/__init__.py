"""torchslim: measure what a neural network costs, compress it, and prove the result.

``torchslim.evaluate(model, task)`` is the function of the ``torchslim.evaluate`` package; the
package's other names stay importable as ``from torchslim.evaluate import ...``.

Names are imported on first use (PEP 562), so ``import torchslim`` and ``torchslim --help`` do not
pay for torch until a model is touched.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "zoo": "torchslim.zoo",
    "DistillConfig": "torchslim.distill",
    "Distiller": "torchslim.distill",
    "KDLoss": "torchslim.distill",
    "LayerMatch": "torchslim.distill",
    "ConfigError": "torchslim.errors",
    "InputShapeError": "torchslim.errors",
    "MissingAssetError": "torchslim.errors",
    "ModelLoadError": "torchslim.errors",
    "TorchslimError": "torchslim.errors",
    "UnknownModelError": "torchslim.errors",
    "EvaluationReport": "torchslim.evaluate",
    "evaluate": "torchslim.evaluate",
    "ProfileReport": "torchslim.profile",
    "profile": "torchslim.profile",
    "NMPruneConfig": "torchslim.prune",
    "StructuredPruneConfig": "torchslim.prune",
    "UnstructuredPruneConfig": "torchslim.prune",
    "prune_": "torchslim.prune",
    "QuantConfig": "torchslim.quantize",
    "quantize_": "torchslim.quantize",
    "TrainConfig": "torchslim.train",
    "Trainer": "torchslim.train",
    "ModelOptions": "torchslim.zoo.options",
    "resolve_model": "torchslim.zoo.options",
    "load": "torchslim.pipeline.artifact",
    "load_recipe": "torchslim.pipeline",
    "compress": "torchslim.pipeline.api",
    "FactorizeConfig": "torchslim.lowrank",
    "factorize_": "torchslim.lowrank",
    "ClusterConfig": "torchslim.share",
    "cluster_": "torchslim.share",
    "ShareLayersConfig": "torchslim.share",
    "share_layers_": "torchslim.share",
    "PackConfig": "torchslim.pack",
    "pack_model": "torchslim.pack",
}

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "DistillConfig",
    "Distiller",
    "EvaluationReport",
    "FactorizeConfig",
    "InputShapeError",
    "KDLoss",
    "LayerMatch",
    "MissingAssetError",
    "ModelLoadError",
    "ModelOptions",
    "NMPruneConfig",
    "PackConfig",
    "ProfileReport",
    "QuantConfig",
    "ShareLayersConfig",
    "StructuredPruneConfig",
    "TorchslimError",
    "TrainConfig",
    "Trainer",
    "UnknownModelError",
    "UnstructuredPruneConfig",
    "__version__",
    "cluster_",
    "compress",
    "evaluate",
    "factorize_",
    "load",
    "load_recipe",
    "pack_model",
    "profile",
    "prune_",
    "quantize_",
    "resolve_model",
    "share_layers_",
    "zoo",
]

if TYPE_CHECKING:
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
    from torchslim.lowrank import FactorizeConfig, factorize_
    from torchslim.pack import PackConfig, pack_model
    from torchslim.pipeline import load_recipe
    from torchslim.pipeline.api import compress
    from torchslim.pipeline.artifact import load
    from torchslim.profile import ProfileReport, profile
    from torchslim.prune import (
        NMPruneConfig,
        StructuredPruneConfig,
        UnstructuredPruneConfig,
        prune_,
    )
    from torchslim.quantize import QuantConfig, quantize_
    from torchslim.share import ClusterConfig, ShareLayersConfig, cluster_, share_layers_
    from torchslim.train import TrainConfig, Trainer
    from torchslim.zoo.options import ModelOptions, resolve_model


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'torchslim' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = getattr(module, name, module)  # torchslim.evaluate is the function, zoo the package
    globals()[name] = value  # later lookups skip __getattr__
    return value


_FUNCTIONS_NAMED_AS_PACKAGES = ("evaluate", "profile")


class _Package(types.ModuleType):
    """Keeps ``torchslim.evaluate`` / ``torchslim.profile`` the functions: importing the
    package of the same name would otherwise set the attribute to the package."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FUNCTIONS_NAMED_AS_PACKAGES and isinstance(value, types.ModuleType):
            self.__dict__.pop(name, None)  # resolved again, as the function, on next access
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
