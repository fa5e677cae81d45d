"""Named real models with their real data and metrics, plus tiny random-init models for tests.

>>> entry = torchslim.zoo.get("mnist-cnn")
>>> model = entry.load()
>>> entry.evaluate(model)
{'accuracy': 0.97}
"""

from __future__ import annotations

from functools import cache

from torchslim.errors import UnknownModelError, did_you_mean
from torchslim.zoo._entry import Batch, ZooEntry


@cache
def _registry() -> dict[str, ZooEntry]:
    from torchslim.zoo import vision

    found: list[ZooEntry] = list(vision.entries())
    for module_name in ("text", "efficientnet", "tiny"):  # added as they land; each is optional
        try:
            module = __import__(f"torchslim.zoo.{module_name}", fromlist=["entries"])
        except ModuleNotFoundError as error:
            if error.name != f"torchslim.zoo.{module_name}":
                raise
            continue
        found += module.entries()
    return {entry.name: entry for entry in found}


def names() -> list[str]:
    """Every zoo entry's name."""
    return list(_registry())


def get(name: str) -> ZooEntry:
    """The zoo entry called ``name``; unknown names raise with a "did you mean" hint."""
    registry = _registry()
    if name not in registry:
        raise UnknownModelError(
            f"unknown model {name!r}.{did_you_mean(name, registry)} "
            "`torchslim zoo list` shows the zoo; a user model is `package.module:factory`, "
            "a Hugging Face model directory, or a .pt2 file."
        )
    return registry[name]


__all__ = ["Batch", "ZooEntry", "get", "names"]
