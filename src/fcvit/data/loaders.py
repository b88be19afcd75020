"""Epoch-addressable batch loaders: batch ``b`` of epoch ``e`` is the same on every run, rank layout and resume.

Both loaders expose ``len(loader)`` (batches per epoch on this rank) and ``loader.batches(epoch, start)``
yielding ``(images, targets, skipped)`` from batch ``start`` on, so a run resumed mid-epoch skips
exactly the batches it had consumed. Sample order comes from torch's ``DistributedSampler`` (shuffled
by seed and epoch, sharded by rank); augmentation randomness is derived from (seed, epoch, sample
index), so it does not depend on workers, ranks or where a run was resumed.

* :class:`DatasetLoader`: any map-style dataset of PIL images through a timm transform, in a
  ``DataLoader`` with workers (ImageFolder, ImageNet, Fashion-MNIST with RandAugment ...).
* :class:`TensorLoader`: an in-memory uint8 image tensor, batched, padded-and-cropped, flipped and
  normalised with tensor ops in the main process. It computes what the PIL path computes for the
  ``'pad'`` crop at native size (tested equal); decoding 60k tiny PIL images per epoch would otherwise
  cost more than the model on a 2-core CPU.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from .folder import BadImageError

__all__ = ["DatasetLoader", "TensorLoader", "epoch_indices", "pad_crop_flip", "sample_seed"]

Batch = tuple[torch.Tensor, torch.Tensor, int]


def epoch_indices(num_samples: int, epoch: int, seed: int, train: bool, rank: int = 0, world_size: int = 1) -> list:
    """This rank's sample indices for ``epoch``.

    Training: ``DistributedSampler`` order (one permutation per (seed, epoch), dealt round-robin to
    ranks, tail dropped so ranks are equal). The global batch ``b`` of N ranks holds the same samples
    as batch ``b`` of one process with an N times larger batch. Evaluation: every sample exactly
    once, unpadded, dealt round-robin.
    """
    if not train:
        return list(range(rank, num_samples, world_size))
    sampler = DistributedSampler(
        range(num_samples), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    sampler.set_epoch(epoch)
    return list(sampler)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for the augmentation of sample ``index`` in ``epoch``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class _Loader:
    """Batching shared by both loaders: indices of an epoch cut into batches from ``start`` on."""

    def __init__(self, num_samples: int, batch_size: int, train: bool, seed: int, rank: int, world_size: int):
        if batch_size < 1:
            raise ValueError(f"batch size must be positive, got {batch_size}")
        self.num_samples, self.batch_size, self.train = num_samples, batch_size, train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        per_rank = len(epoch_indices(num_samples, 0, seed, train, rank, world_size))
        # training drops the last partial batch (every step sees a full batch); evaluation keeps it
        self.num_batches = per_rank // batch_size if train else math.ceil(per_rank / batch_size)
        if train and self.num_batches == 0:
            raise ValueError(
                f"{num_samples} training samples over {world_size} process(es) do not fill one batch of {batch_size}"
            )

    def __len__(self) -> int:
        return self.num_batches

    def _indices(self, epoch: int, start: int) -> list:
        idx = epoch_indices(self.num_samples, epoch, self.seed, self.train, self.rank, self.world_size)
        return idx[start * self.batch_size : self.num_batches * self.batch_size]


def pad_crop_flip(images: torch.Tensor, pad: int, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Zero-pad by ``pad``, crop back to size at per-image ``offsets`` [B, 2] (row, col in 0..2*pad), flip.

    Equal to torchvision's ``RandomCrop(size, padding=pad)`` then ``RandomHorizontalFlip`` with those draws.
    """
    B, C, H, W = images.shape
    if pad:
        padded = F.pad(images, (pad, pad, pad, pad))
        rows = (offsets[:, 0, None] + torch.arange(H))[:, None, :, None]  # [B, 1, H, 1]
        cols = (offsets[:, 1, None] + torch.arange(W))[:, None, None, :]  # [B, 1, 1, W]
        batch = torch.arange(B)[:, None, None, None]
        chans = torch.arange(C)[None, :, None, None]
        images = padded[batch, chans, rows, cols]
    return torch.where(flips[:, None, None, None], images.flip(-1), images)


class TensorLoader(_Loader):
    """Batches of an in-memory uint8 image tensor [N, H, W] (grey) or [N, C, H, W].

    Training draws, per (seed, epoch), a crop offset and a flip for every sample (indexed by sample,
    so sharding and resume do not change them); evaluation only normalises. ``in_chans=3`` repeats a
    grey channel.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        in_chans: int = 1,
        crop_pad: int = 0,
        hflip: float = 0.0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__(len(targets), batch_size, train, seed, rank, world_size)
        if images.dtype != torch.uint8:
            raise ValueError(f"TensorLoader expects uint8 images, got {images.dtype}")
        self.images = images if images.ndim == 4 else images.unsqueeze(1)
        self.targets = targets.long()
        if self.images.shape[1] not in (1, in_chans):
            raise ValueError(f"images have {self.images.shape[1]} channels, cannot feed in_chans={in_chans}")
        self.in_chans = in_chans
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_pad, self.hflip = crop_pad, hflip

    def augmentation(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Crop offsets [N, 2] and flips [N] of every sample in ``epoch``."""
        # index num_samples: one past the last sample, a stream no sample uses
        g = torch.Generator().manual_seed(sample_seed(self.seed, epoch, self.num_samples))
        offsets = torch.randint(0, 2 * self.crop_pad + 1, (self.num_samples, 2), generator=g)
        flips = torch.rand(self.num_samples, generator=g) < self.hflip
        return offsets, flips

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        indices = torch.tensor(self._indices(epoch, start), dtype=torch.long)
        offsets, flips = self.augmentation(epoch) if self.train else (None, None)
        for sel in indices.split(self.batch_size):
            x = self.images[sel]
            if self.train:
                x = pad_crop_flip(x, self.crop_pad, offsets[sel], flips[sel])
            x = x.expand(-1, self.in_chans, -1, -1).float().div(255)
            yield (x - self.mean) / self.std, self.targets[sel], 0


class _SeededSamples(Dataset):
    """``transform(dataset[i])`` under RNGs seeded from (seed, epoch, i); global RNG states are restored.

    A bad image gives ``None`` when ``skip_bad``, else its :class:`BadImageError`, returned rather than raised:
    :meth:`DatasetLoader.batches` raises it in the main process, one line naming the file and the reason, where
    a DataLoader worker's raise would come back wrapped in the worker's traceback.
    """

    def __init__(self, dataset: Dataset, transform, seed: int, epoch: int, skip_bad: bool):
        self.dataset, self.transform, self.seed, self.epoch, self.skip_bad = dataset, transform, seed, epoch, skip_bad

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        try:
            image, target = self.dataset[index]
        except BadImageError as e:
            return None if self.skip_bad else e
        s = sample_seed(self.seed, self.epoch, index)
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(s)
        np.random.seed(s)
        torch.default_generator.manual_seed(s)
        try:
            image = self.transform(image)
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])
        return image, target


def _collate_skipping(samples: list) -> Batch | BadImageError:
    """Collate the readable samples; count the skipped (``None``) ones. A bad image's error is the batch."""
    errors = [s for s in samples if isinstance(s, BadImageError)]
    if errors:
        return errors[0]
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, targets = default_collate(good)
    return images, targets, skipped


class DatasetLoader(_Loader):
    """Batches of a map-style dataset of ``(PIL image, label)`` through ``transform``, with DataLoader workers."""

    def __init__(
        self,
        dataset: Dataset,
        transform,
        batch_size: int,
        train: bool,
        workers: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        skip_bad: bool = False,
        pin_memory: bool = False,
    ):
        super().__init__(len(dataset), batch_size, train, seed, rank, world_size)
        self.dataset, self.transform, self.workers = dataset, transform, workers
        self.skip_bad, self.pin_memory = skip_bad, pin_memory

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        loader = DataLoader(
            _SeededSamples(self.dataset, self.transform, self.seed, epoch, self.skip_bad),
            batch_size=self.batch_size,
            sampler=self._indices(epoch, start),
            num_workers=self.workers,
            collate_fn=_collate_skipping,
            pin_memory=self.pin_memory,
            generator=torch.Generator().manual_seed(self.seed),  # keeps the global RNG untouched
        )
        for batch in loader:
            if isinstance(batch, BadImageError):
                raise batch
            yield batch
