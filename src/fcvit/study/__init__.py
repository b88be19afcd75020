"""``fcvit study``: resumable grids of training runs (arms x seeds) with their spread, and reports of them."""

from .study import Arm, Comparison, Study, StudyError, load_study

__all__ = ["Arm", "Comparison", "Study", "StudyError", "load_study"]
