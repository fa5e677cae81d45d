"""One pipeline: recipes of registered steps, run in order, checkpointed, written as one artifact.

``compress(model_spec, recipe, out)`` from Python, ``torchslim compress MODEL --recipe R.yaml``
from the command line; ``load(dir)`` rebuilds any artifact the pipeline writes.
"""

from torchslim.pipeline.recipe import Recipe, RecipeError, Stage, load_recipe, parse_recipe
from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step

__all__ = [
    "Recipe",
    "RecipeError",
    "Stage",
    "Step",
    "StepContext",
    "StepResult",
    "load_recipe",
    "parse_recipe",
    "register_step",
]
