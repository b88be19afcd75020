"""The models' front door: every command, and the Python API, builds and loads models here.

- :func:`create`: a model by name (``timm.create_model`` with one-line errors; ``img_size`` only where the model
  fixes its input size).
- :func:`load`: a model from any checkpoint a user has, or by name, with what the file records (model name and
  arguments, classes and their names, input size, mean/std, the training config) in a :class:`LoadedModel`, and
  optionally :func:`fcvit.optimize` applied.
- :func:`create_pretrained`: a model started from a file of pretrained weights with adaptation (classifier
  re-initialised for another class count, stem adapted to other input channels, position tables resampled to
  another image size), as ``fcvit train --pretrained-path`` and timm's ``train.py`` do.

``fcvit.create``, ``fcvit.load`` and ``fcvit.create_pretrained`` are these functions.
"""

from .create import accepted_arguments, check_model_name, create, has_fixed_input_size
from .load import LoadedModel, check_finite, check_record, load, weights_layout
from .pretrained import create_pretrained

__all__ = [
    "LoadedModel",
    "accepted_arguments",
    "check_finite",
    "check_model_name",
    "check_record",
    "create",
    "create_pretrained",
    "has_fixed_input_size",
    "load",
    "weights_layout",
]
