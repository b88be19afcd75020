"""Dense prediction on FCViT backbones: Mask R-CNN (torchvision) and Semantic FPN, with their data and metrics.

Modules: :mod:`.backbone` (timm ``features_only`` FCViT + torchvision FPN), :mod:`.detection`,
:mod:`.segmentation`, :mod:`.data` (Fashion-MNIST-on-canvas generator, COCO and ADE20K-layout datasets),
:mod:`.metrics` (COCO AP, mIoU), :mod:`.engine` (the training loop), :mod:`.config` (recipes as data),
:mod:`.cli` (``fcvit dense|det|seg``). Nothing heavy is imported here, so the CLI starts fast.
"""
