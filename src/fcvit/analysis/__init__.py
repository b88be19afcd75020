"""The paper's spatial-modeling analyses (section 3.1.2 and 4.4): attention statistics and maps.

- :mod:`.stats`: query/head irrelevance, entropy and top-1% mass of attention [B, H, N, M] (``attention_stats``).
- :mod:`.maps`: a model's attention maps (timm ``AttentionExtract``) and FCViT similarity maps (``MapProbe``).
- :mod:`.survey`: the statistics of every layer over a data set; :mod:`.plots`: the figures.
- :mod:`.cli`: ``fcvit analyze attention | stats | similarity | compare`` (figures and JSON).

Nothing heavy is imported here, so the CLI starts fast: import from the modules.
"""
