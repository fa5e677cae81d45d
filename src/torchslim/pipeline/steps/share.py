"""Weight sharing steps: ``cluster`` (k-means codebooks per layer, centroids trained by a later
finetune/distill stage; arXiv 1510.00149) and ``share_layers`` (ALBERT-style blocks shared by
several layers; arXiv 1909.11942)."""

from __future__ import annotations

from typing import Any

from torch import nn

from torchslim.pipeline.registry import Step, StepContext, StepResult, register_step
from torchslim.share.config import ClusterConfig, ShareLayersConfig


def run_cluster(model: nn.Module, options: ClusterConfig, context: StepContext) -> StepResult:
    from torchslim.share import cluster_

    return StepResult(cluster_(model, options).summary())


def run_share_layers(
    model: nn.Module, options: ShareLayersConfig, context: StepContext
) -> StepResult:
    from torchslim.share import share_layers_

    result = share_layers_(model, options)
    return StepResult(result.summary(), {"container": result.container, "groups": result.groups})


def restore_share_layers(
    model: nn.Module, options: ShareLayersConfig, record: dict[str, Any], context: StepContext
) -> None:
    from torchslim.share.layers import find_container, share_groups

    share_groups(find_container(model, record["container"]), record["groups"])


# no restore: a checkpoint holds folded weights, and centroid training needs the codebooks,
# so a resumed run starts again from the last stage before clustering
register_step(
    Step("cluster", ClusterConfig, run_cluster, "k-means weight sharing", before_quantize=True)
)
register_step(
    Step(
        "share_layers",
        ShareLayersConfig,
        run_share_layers,
        "ALBERT-style cross-layer parameter sharing",
        restore=restore_share_layers,
        before_quantize=True,
    )
)
