"""torchslim: measure what a neural network costs, compress it, and prove the result."""

from torchslim.errors import (
    ConfigError,
    InputShapeError,
    MissingAssetError,
    ModelLoadError,
    TorchslimError,
    UnknownModelError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InputShapeError",
    "MissingAssetError",
    "ModelLoadError",
    "TorchslimError",
    "UnknownModelError",
    "__version__",
]
