"""Low-rank factorization: truncated SVD and whitened (data-aware) SVD of Linear layers,
Tucker-2 of convolutions, ranks by rank / energy / a global parameter or MAC target."""

from torchslim.lowrank.apply import FactorizeResult, factorize_
from torchslim.lowrank.config import FactorizeConfig
from torchslim.lowrank.modules import CPConv, LowRankLinear, Tucker2Conv, build_factorized

__all__ = [
    "CPConv",
    "FactorizeConfig",
    "FactorizeResult",
    "LowRankLinear",
    "Tucker2Conv",
    "build_factorized",
    "factorize_",
]
