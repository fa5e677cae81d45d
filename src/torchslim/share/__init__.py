"""Weight sharing: k-means clustered weights (Deep Compression) and layers sharing one block
(ALBERT)."""

from torchslim.share.cluster import ClusteredWeight, ClusterResult, cluster_, codebook_groups
from torchslim.share.config import ClusterConfig, ShareLayersConfig
from torchslim.share.layers import ShareLayersResult, share_layers_, unique_params

__all__ = [
    "ClusterConfig",
    "ClusterResult",
    "ClusteredWeight",
    "ShareLayersConfig",
    "ShareLayersResult",
    "cluster_",
    "codebook_groups",
    "share_layers_",
    "unique_params",
]
