"""DeviceLoader: the whole split on the training device, batches shuffled, augmented and normalised there.

Training epochs are a pure function of ``(seed, epoch)``: a CPU ``torch.Generator`` seeded from the pair
draws, once per epoch and for all ``N`` samples at once, a permutation and (with ``augment``) one flip bit
and one crop offset per position of that permutation. Any batch can therefore be produced — or skipped —
without drawing anything else, so ``batches(epoch, start=k)`` yields exactly the batches ``k, k+1, …`` of
``batches(epoch)`` (this is what resuming mid-epoch relies on). Each augmented batch is
``augment(padded split, AugmentPlan(its flips, offsets and indices))`` (:func:`aacn.data.augment.augment`).

Distributed data parallel: ``batch_size`` is the *global* batch. Every rank computes the same epoch plan;
rank ``r`` of ``world_size`` takes rows ``[r*b, (r+1)*b)`` (``b = batch_size // world_size``) of each
global batch, so the ranks' batches together are exactly the single-process batch.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from aacn.data.augment import PAD, AugmentPlan, PaddedImages, augment
from aacn.data.normalize import Normalizer
from aacn.data.splits import Split
from aacn.errors import UserError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch)`` by hashing, so nearby pairs give unrelated streams."""
    digest = hashlib.sha256(f"aacn-loader:{int(seed)}:{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def epoch_plan(n: int, seed: int, epoch: int, augment: bool, pad: int = PAD
               ) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(perm (n,), flips (n,) bool | None, offsets (n, 2) int64 | None)`` of one training epoch.

    ``flips[i]`` / ``offsets[i]`` are the :class:`~aacn.data.augment.AugmentPlan` choices for the sample at
    position ``i`` of the permutation. The permutation is drawn first, so it does not depend on ``augment``.
    """
    g = epoch_generator(seed, epoch)
    perm = torch.randperm(n, generator=g)
    if not augment:
        return perm, None, None
    flips = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64).bool()
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g, dtype=torch.int64)
    return perm, flips, offsets


class DeviceLoader:
    """Batches of one split, produced on ``device``.

    Args:
        split: images uint8 ``(N, C, H, W)`` and labels; moved to ``device`` once, here.
        batch_size: the global batch size (summed over ranks).
        device: where the data lives and batches are produced.
        normalizer: uint8 → float32 normalisation (moved to ``device``).
        train: shuffle (and optionally augment) per epoch and drop the last partial batch; else in order,
            no augmentation, last partial batch kept.
        augment: random flip + pad/crop (only with ``train``).
        pad: zero padding of the random crop (the dataset's, :attr:`aacn.data.registry.Dataset.pad`).
        seed: seed of the per-epoch plan.
        rank, world_size: this process's slice of each global batch.
        channels_last: yield images in ``torch.channels_last`` memory format.
    """

    def __init__(self, split: Split, batch_size: int, *, device: torch.device | str, normalizer: Normalizer,
                 train: bool, augment: bool = False, seed: int = 0, rank: int = 0, world_size: int = 1,
                 channels_last: bool = False, pad: int = PAD) -> None:
        n = len(split)
        if batch_size <= 0:
            raise UserError(f"batch_size={batch_size} must be positive")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank={rank} / world_size={world_size} is invalid: need world_size >= 1 and "
                            f"0 <= rank < world_size; check the launcher's environment")
        if batch_size % world_size:
            raise UserError(f"batch_size={batch_size} (the global batch) is not divisible by "
                            f"world_size={world_size}; choose a multiple of {world_size}")
        if train and batch_size > n:
            raise UserError(f"batch_size={batch_size} is larger than the training split ({n} images), so an "
                            f"epoch would have no full batch; choose batch_size <= {n}")
        self.device = torch.device(device)
        self.train, self.augment = train, augment and train
        images = split.images.to(self.device)
        self.image_size = tuple(images.shape[-2:])
        # With augmentation the split is kept only in the form augment() copies from (PaddedImages: uint8,
        # 3.1x the split's memory), so that each augmented batch is a single row copy.
        self.images: Tensor | None = None if self.augment else images
        self.padded: PaddedImages | None = PaddedImages(images, pad) if self.augment else None
        del images
        self.labels = split.labels.to(self.device)
        self.normalizer = normalizer.to(self.device)
        self.batch_size, self.pad = batch_size, pad
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.local_batch = batch_size // world_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @property
    def num_samples(self) -> int:
        return int(self.labels.shape[0])

    def __len__(self) -> int:
        """Global batches per epoch: ``N // batch_size`` for training, ``ceil(N / batch_size)`` otherwise."""
        if self.train:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def _finish(self, images_u8: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        # Change the layout while still uint8 (a quarter of float32's bytes); the normaliser keeps it.
        x = self.normalizer(images_u8.contiguous(memory_format=self.memory_format))
        return x.contiguous(memory_format=self.memory_format), labels

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield this rank's ``(images float32 (b, C, H, W), labels int64 (b,))`` for global batches
        ``start, start+1, …, len(self)-1`` of ``epoch`` (``epoch`` is ignored when not training)."""
        if not 0 <= start <= len(self):
            raise ValueError(f"start={start} must be in [0, {len(self)}] (batches per epoch)")
        return self._train_batches(epoch, start) if self.train else self._eval_batches(start)

    def _train_batches(self, epoch: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        perm, flips, offsets = epoch_plan(self.num_samples, self.seed, epoch, self.augment, self.pad)
        # Keep only this rank's rows of the used batches: (batches, local batch, [index, flip, row, col]),
        # moved to the device in one copy per epoch.
        nb, b, r = len(self), self.batch_size, self.rank
        rows = torch.arange(nb * b).view(nb, b)[:, r * self.local_batch:(r + 1) * self.local_batch]
        columns = [perm[rows, None]]
        if self.augment:
            columns += [flips[rows, None].to(torch.int64), offsets[rows]]
        plan = torch.cat(columns, dim=-1).to(self.device)
        for k in range(start, nb):
            idx = plan[k, :, 0]
            if self.augment:
                choices = AugmentPlan(flips=plan[k, :, 1], offsets=plan[k, :, 2:], index=idx, pad=self.pad)
                x = augment(self.padded, choices)
            else:
                x = self.images.index_select(0, idx)
            yield self._finish(x, self.labels.index_select(0, idx))

    def _eval_batches(self, start: int) -> Iterator[tuple[Tensor, Tensor]]:
        n, b, lb = self.num_samples, self.batch_size, self.local_batch
        for k in range(start, len(self)):
            lo = min(k * b + self.rank * lb, n)
            hi = min(lo + lb, (k + 1) * b, n)
            if hi > lo:
                yield self._finish(self.images[lo:hi], self.labels[lo:hi])
