"""What a data set was when a run used it, small enough for a checkpoint, and how another one differs.

A fingerprint is ``{"split": name, "classes": [names], "counts": [images per class], "digests": [one per class]}``;
each digest is a short SHA-256 of the class's samples in dataset order (an image folder's paths relative to its
root, Fashion-MNIST's pixels). A thousand classes take a few kilobytes whatever the number of images, and a
difference can still be named: which class is missing or new, how many images a class lost or gained, which
class had images renamed or replaced.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

from torch.utils.data import Dataset, Subset

from .fashion_mnist import FashionMNIST
from .folder import ImageFolderDataset

__all__ = ["check_same_data", "class_names_notice", "data_changes", "data_fingerprint"]


def data_fingerprint(dataset: Dataset, classes: list[str], split: str) -> dict[str, Any]:
    """The fingerprint of ``dataset`` (an :class:`ImageFolderDataset` or :class:`FashionMNIST`, or a
    ``Subset`` of one) whose labels index ``classes``; ``split`` names it in messages ('train', 'val' ...)."""
    hashes = [hashlib.sha256() for _ in classes]
    counts = [0] * len(classes)
    for label, key in _sample_keys(dataset):
        hashes[label].update(len(key).to_bytes(8, "little") + key)
        counts[label] += 1
    digests = [h.hexdigest()[:16] for h in hashes]
    return {"split": split, "classes": list(classes), "counts": counts, "digests": digests}


def _sample_keys(dataset: Dataset, indices: list[int] | None = None):
    """``(label, bytes)`` naming each sample of ``dataset`` (at ``indices``, all if None), in order."""
    if isinstance(dataset, Subset):
        inner = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        yield from _sample_keys(dataset.dataset, inner)
        return
    indices = range(len(dataset)) if indices is None else indices
    if isinstance(dataset, ImageFolderDataset):
        prefix = len(os.path.join(dataset.root, ""))  # samples are paths under root: cut it off
        for i in indices:
            path, label = dataset.samples[i]
            yield label, path[prefix:].encode()
    elif isinstance(dataset, FashionMNIST):
        images, targets = dataset.images.numpy(), dataset.targets.tolist()
        for i in indices:
            yield targets[i], images[i].tobytes()
    else:
        raise TypeError(f"no fingerprint for a {type(dataset).__name__}")


def check_same_data(recorded: dict[str, Any] | None, current: dict[str, Any], checkpoint: str | os.PathLike) -> None:
    """Refuse to resume ``checkpoint`` on other data: ``recorded`` and ``current`` map a role ('train', 'val') to
    a :func:`data_fingerprint`; a difference is a ``ValueError`` naming every change in one line. A checkpoint
    from before fingerprints were recorded (``recorded`` None) is not checked."""
    if recorded is None:
        return
    changes = [c for role, fp in current.items() if role in recorded for c in data_changes(recorded[role], fp)]
    changes = list(dict.fromkeys(changes))  # a class renamed in train/ and val/ is said once
    if changes:
        raise ValueError(
            f"--resume: the data differs from what {checkpoint} was trained on ({'; '.join(changes)}); "
            "resume on the same data, or start a new run"
        )


def data_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What differs from fingerprint ``old`` to ``new`` (of ``new``'s split), one phrase each (empty if nothing):
    "class 'Bag' missing or renamed", "class 'Bags' new", "3 images removed from train/Bag", "2 images added to
    train/Bag", "images renamed or replaced in train/Bag", "train/ classes in another order"."""
    split = new["split"]
    old_counts = dict(zip(old["classes"], zip(old["counts"], old["digests"])))
    new_counts = dict(zip(new["classes"], zip(new["counts"], new["digests"])))
    changes = [f"class {c!r} missing or renamed" for c in old["classes"] if c not in new_counts]
    changes += [f"class {c!r} new" for c in new["classes"] if c not in old_counts]
    for name in (c for c in old["classes"] if c in new_counts):
        (before, old_digest), (after, new_digest) = old_counts[name], new_counts[name]
        if after < before:
            changes.append(f"{_images(before - after)} removed from {split}/{name}")
        elif after > before:
            changes.append(f"{_images(after - before)} added to {split}/{name}")
        elif old_digest != new_digest:
            changes.append(f"images renamed or replaced in {split}/{name}")
    if not changes and old["classes"] != new["classes"]:
        changes.append(f"{split}/ classes in another order")
    return changes


def _images(n: int) -> str:
    return f"{n} image{'s' if n != 1 else ''}"


def class_names_notice(data: str, folder_classes: list[str], model_classes: list[str]) -> str | None:
    """One line saying how the class names of ``data`` differ from a model's, or None when they agree.

    The rule (``fcvit validate``): labels are matched by position, the data's i-th class (sorted folder order)
    against the model's i-th output, as long as the counts agree; names that differ are named, up to three.
    ImageNet's synset folders match the descriptions a 1000-class checkpoint without names is given
    (``n01440764`` is 'tench, Tinca tinca'); other checkpoints without names (``class_0, class_1, ...``) get
    the notice, which is true: nothing says the labels mean the folders.
    """
    if len(folder_classes) == 1000:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        if folder_classes == info.label_names():
            folder_classes = [info.label_name_to_description(name) for name in folder_classes]
    differ = [(i, f, m) for i, (f, m) in enumerate(zip(folder_classes, model_classes)) if f != m]
    if not differ:
        return None
    if sorted(folder_classes) == sorted(model_classes):
        what = "the same names in another order"
    else:
        what = f"{len(differ)} of {len(model_classes)} differ"
    shown = ", ".join(f"{i}: {f!r} vs {m!r}" for i, f, m in differ[:3]) + (", ..." if len(differ) > 3 else "")
    return (
        f"note: {data} has other class names than the checkpoint ({what}; label: data vs checkpoint {shown}); "
        "labels are matched by position"
    )
