"""Training, validation and prediction: ``fcvit train``, ``fcvit validate``, ``fcvit predict``.

Reusable parts for any training loop: :mod:`.checkpoint` (atomic save, safe load), :mod:`.distributed`
(torchrun/DDP set-up and collectives) and :mod:`.logger` (metrics.csv, TensorBoard, curves, progress).
"""
