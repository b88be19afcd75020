"""A study declared in YAML: arms (each a set of ``fcvit train`` config keys) times seeds, and optional analyses.

::

    name: softmax-replacements        # default: the file's stem; runs go to ROOT/<name>/<arm>/seed<k>/
    seeds: 3                          # seeds 0..N-1 (the train seed of run seed<k> is k)
    reference: attn_softmax           # the arm the report compares every other arm with (default: the first)
    train: {epochs: 10, train_limit: 20000}   # config keys shared by every arm (any `fcvit train` key)
    arms:
      - name: attn_softmax
        train: {model: deit_test_attn_softmax, model_kwargs: {img_size: 28, patch_size: 4}}
        seeds: 8                      # this arm's own number of seeds (default: the study's)
      - name: distilled               # --teacher: the best run (top-1) of these arms of another study
        train: {distill: hard}
        teacher: {study: mixers, arms: [convnext_atto, resnet18]}
      - name: plain                   # no training: analyse the runs of another study's arm
        source: {study: softmax-replacements, arm: attn_softmax}
    comparisons:                      # optional: the paper's claims, and comparisons beside those with `reference`
      - {arm: plain, claim: -0.4}                       # against `reference` (the default `against`)
      - {arm: distilled, against: plain, claim: +0.5}   # another pair (e.g. an ablation's consecutive steps)
    analysis:                         # after training, on each run's final weights (checkpoint-last.pth)
      stats: {limit: 1000, batch_size: 50}    # `fcvit analyze stats` on the validation split
      attention: {images: 4}                  # `fcvit analyze attention` (Fig. 2 grids) on the first N val images

The report compares every arm with ``reference``; ``comparisons`` gives such a pair the paper's claimed difference
(``claim``: mean top-1 of ``arm`` minus that of ``against``, in points) or adds a pair of two other arms.

Every error is one line naming the file and the entry.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engine.config import read_yaml_mapping
from ..train.config import load_config

__all__ = ["ANALYSES", "Arm", "Comparison", "Study", "StudyError", "load_study"]

ANALYSES = {"stats": ("limit", "batch_size"), "attention": ("images", "block", "heads")}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# set by the runner per run: a study must not fix them
RUNNER_KEYS = ("seed", "output", "experiment", "resume", "teacher")


MAX_SEEDS = 1000  # seeds per arm: a study of that many runs for months on one machine


class StudyError(ValueError):
    """A study file (or a study directory) that cannot be run or reported as it stands."""


@dataclass(frozen=True)
class Arm:
    """One arm: the ``fcvit train`` config keys of its runs, or the runs of another study's arm it analyses.

    ``teacher``: ``{"study": NAME, "arms": [ARM, ...]}``, the distillation teacher is the best run of those arms.
    ``source``: ``{"study": NAME, "arm": ARM}``, no training; the analyses read that arm's runs.
    ``seeds``: this arm's number of seeds (None: the study's).
    """

    name: str
    train: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    seeds: int | None = None


@dataclass(frozen=True)
class Comparison:
    """The report's test of ``arm`` against ``against``; ``claim`` is the paper's difference of their top-1
    (``arm`` minus ``against``, in points), None where the paper gives none."""

    arm: str
    against: str
    claim: float | None = None


@dataclass(frozen=True)
class Study:
    """A declared study; :func:`load_study` builds and checks it. ``comparisons`` are the declared ones only (the
    report adds every arm against ``reference`` that is not declared)."""

    name: str
    arms: tuple[Arm, ...]
    seeds: int = 3
    reference: str = ""
    description: str = ""
    analysis: dict[str, dict[str, Any]] = field(default_factory=dict)
    comparisons: tuple[Comparison, ...] = ()
    path: str = ""

    def arm(self, name: str) -> Arm:
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise StudyError(f"{self.path or self.name}: no arm {name!r} (arms: {', '.join(a.name for a in self.arms)})")

    def seeds_of(self, arm: Arm) -> int:
        """How many seeds ``arm`` runs: its own count, else the study's."""
        return arm.seeds or self.seeds

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise StudyError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _seed_count(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_SEEDS:
        raise StudyError(f"{where}: 'seeds' must be an integer from 1 to {MAX_SEEDS}, got {value!r}")
    return value


def _keys(value: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise StudyError(f"{where}: unknown key(s) {unknown} (allowed: {', '.join(allowed)})")


def _check_train(values: dict[str, Any], where: str) -> dict[str, Any]:
    """Train config keys as ``fcvit train`` reads them (``-`` or ``_``), checked by its own config loader."""
    values = {k.replace("-", "_"): v for k, v in values.items()}
    fixed = sorted(set(values) & set(RUNNER_KEYS))
    if fixed:
        raise StudyError(f"{where}: {fixed} are set by `fcvit study run` per run, not by the study")
    # the runner gives a distilling arm its teacher per run: check the keys as that run will see them
    teacher = {"teacher": "<the study's teacher>"} if values.get("distill", "none") != "none" else {}
    try:
        load_config(overrides={**values, **teacher}, source=where)
    except (ValueError, TypeError) as e:
        raise StudyError(str(e) if where in str(e) else f"{where}: {e}") from None
    return values


def _arm(entry: Any, common: dict[str, Any], where: str) -> Arm:
    entry = _mapping(entry, where)
    _keys(entry, ("name", "train", "teacher", "source", "seeds"), where)
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise StudyError(f"{where}: 'name' must be a folder-safe name (letters, digits, _ . -), got {name!r}")
    where = f"{where.rsplit(':', 1)[0]}: arm {name!r}"
    seeds = None if entry.get("seeds") is None else _seed_count(entry["seeds"], where)
    teacher, source = entry.get("teacher"), entry.get("source")
    if source is not None:
        source = _mapping(source, f"{where} source")
        _keys(source, ("study", "arm"), f"{where} source")
        if not all(isinstance(source.get(k), str) for k in ("study", "arm")) or entry.get("train") or teacher:
            raise StudyError(f"{where}: 'source' names a study and an arm ({{study: S, arm: A}}) and trains nothing")
        return Arm(name, source=dict(source), seeds=seeds)
    train = _check_train({**common, **_mapping(entry.get("train"), f"{where} train")}, where)
    if teacher is not None:
        teacher = _mapping(teacher, f"{where} teacher")
        _keys(teacher, ("study", "arms"), f"{where} teacher")
        arms = teacher.get("arms")
        if not isinstance(teacher.get("study"), str) or not isinstance(arms, list) or not arms:
            raise StudyError(f"{where}: 'teacher' is {{study: S, arms: [A, ...]}} (the best run of those arms)")
        if train.get("distill", "none") == "none":
            raise StudyError(f"{where}: a teacher needs 'distill: hard' or 'distill: soft' in the arm's train keys")
        teacher = {"study": teacher["study"], "arms": [str(a) for a in arms]}
    elif train.get("distill", "none") != "none":
        raise StudyError(f"{where}: 'distill' needs a 'teacher: {{study: S, arms: [A, ...]}}' entry")
    return Arm(name, train=train, teacher=teacher, seeds=seeds)


def _comparisons(value: Any, names: list[str], reference: str, path: str) -> tuple[Comparison, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise StudyError(f"{path}: 'comparisons' must be a list of {{arm: A, against: B, claim: X}}")
    comparisons: list[Comparison] = []
    for i, entry in enumerate(value):
        where = f"{path}: comparisons[{i}]"
        entry = _mapping(entry, where)
        _keys(entry, ("arm", "against", "claim"), where)
        arm, against, claim = entry.get("arm"), entry.get("against", reference), entry.get("claim")
        for key, arm_name in (("arm", arm), ("against", against)):
            if arm_name not in names:
                raise StudyError(f"{where}: {key} {arm_name!r} is not an arm ({', '.join(names)})")
        if arm == against:
            raise StudyError(f"{where}: compares arm {arm!r} with itself")
        if claim is not None and (
            not isinstance(claim, (int, float)) or isinstance(claim, bool) or not math.isfinite(claim)
        ):
            raise StudyError(
                f"{where}: 'claim' must be a number (the paper's top-1 of {arm} minus {against}, in points), "
                f"got {claim!r}"
            )
        if any((c.arm, c.against) == (arm, against) for c in comparisons):
            raise StudyError(f"{where}: {arm} against {against} is declared twice")
        comparisons.append(Comparison(arm, against, None if claim is None else float(claim)))
    return tuple(comparisons)


def study_from_dict(data: Any, path: str, name: str | None = None) -> Study:
    """The :class:`Study` of a parsed YAML document (``path`` names it in errors)."""
    data = _mapping(data, path)
    _keys(data, ("name", "description", "seeds", "reference", "train", "arms", "comparisons", "analysis"), path)
    name = data.get("name", name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise StudyError(f"{path}: 'name' must be a folder-safe name (letters, digits, _ . -), got {name!r}")
    seeds = _seed_count(data.get("seeds", 3), path)
    common = _mapping(data.get("train"), f"{path}: train")
    entries = data.get("arms")
    if not isinstance(entries, list) or not entries:
        raise StudyError(f"{path}: 'arms' must be a non-empty list of arms")
    arms = tuple(_arm(e, common, f"{path}: arms[{i}]") for i, e in enumerate(entries))
    names = [a.name for a in arms]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise StudyError(f"{path}: arm names must be unique, repeated: {duplicates}")
    reference = data.get("reference", names[0])
    if reference not in names:
        raise StudyError(f"{path}: reference {reference!r} is not an arm ({', '.join(names)})")
    analysis = _mapping(data.get("analysis"), f"{path}: analysis")
    _keys(analysis, tuple(ANALYSES), f"{path}: analysis")
    checked = {}
    for kind, options in analysis.items():
        options = _mapping(True if options is True else options, f"{path}: analysis {kind}") if options else {}
        _keys(options, ANALYSES[kind], f"{path}: analysis {kind}")
        checked[kind] = dict(options)
    if any(a.source for a in arms) and not checked:
        raise StudyError(f"{path}: arms with a 'source' train nothing, so the study needs an 'analysis' entry")
    return Study(
        name=name,
        arms=arms,
        seeds=seeds,
        reference=reference,
        description=str(data.get("description", "")),
        analysis=checked,
        comparisons=_comparisons(data.get("comparisons"), names, reference, path),
        path=path,
    )


def load_study(path: str | Path) -> Study:
    """Read and check the study file at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"study file {path} does not exist")
    try:
        data = read_yaml_mapping(path)
    except ValueError as e:
        raise StudyError(str(e)) from None
    return study_from_dict(data, str(path), name=path.stem)
