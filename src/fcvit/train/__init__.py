"""Training, validation and prediction: ``fcvit train``, ``fcvit validate``, ``fcvit predict``.

Modules: :mod:`.config` (the settings, declared once), :mod:`.train` (the loop, top to bottom), :mod:`.build`
(data config and loaders), :mod:`.evaluate`, :mod:`.resume`, :mod:`.distill` (DeiT distillation), :mod:`.cli`.
What any training loop shares (checkpoints, run directories, logging, DDP) is in :mod:`fcvit.engine`.
Nothing heavy is imported here, so the CLI starts fast.
"""
