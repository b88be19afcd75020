"""The paper's spatial-modeling analyses (section 3.1.2 and 4.4): attention statistics and maps.

- :func:`attention_stats`: query/head irrelevance, entropy and top-1% mass of attention [B, H, N, M].
- :class:`MapProbe`: a model's attention maps (timm ``AttentionExtract``) and FCViT similarity maps.
- ``fcvit analyze attention | stats | similarity | compare``: figures and JSON (:mod:`fcvit.analysis.cli`).
"""

from .maps import (
    MapProbe,
    attention_layer_names,
    disable_fused_attention,
    fcvit_blocks,
    input_config,
    similarity_rows,
    similarity_site,
    similarity_sites,
    token_grid,
)
from .stats import STAT_NAMES, attention_stats, drop_prefix_tokens
from .survey import dataset_statistics, map_statistics

__all__ = [
    "STAT_NAMES",
    "MapProbe",
    "attention_layer_names",
    "attention_stats",
    "disable_fused_attention",
    "dataset_statistics",
    "drop_prefix_tokens",
    "fcvit_blocks",
    "input_config",
    "map_statistics",
    "similarity_rows",
    "similarity_site",
    "similarity_sites",
    "token_grid",
]
