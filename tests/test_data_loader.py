"""aacn.data.augment and aacn.data.loader: augment() vs a per-image reference, normaliser statistics, the
DeviceLoader's batches vs a plain reference loader, and its determinism, resume (start=k), rank split and
memory format."""

from __future__ import annotations

import pytest
import torch

from aacn.data.augment import AugmentPlan, PaddedImages, augment
from aacn.data.loader import DeviceLoader, epoch_generator, epoch_plan
from aacn.data.normalize import NORMALIZE_MODES, Normalizer
from aacn.data.splits import Split
from aacn.errors import UserError


def _reference_crop_flip(img: torch.Tensor, flip: bool, oy: int, ox: int, pad: int) -> torch.Tensor:
    """One image, step by step: zero-pad, crop, flip."""
    h, w = img.shape[-2:]
    padded = torch.zeros(img.shape[0], h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    crop = padded[:, oy:oy + h, ox:ox + w]
    return crop.flip(-1) if flip else crop


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _split(n: int) -> Split:
    """Labels are sample ids, so every yielded row can be traced back to its source image."""
    return Split(_images(n), torch.arange(n))


def _crop_flip(x: torch.Tensor, flips: torch.Tensor, offsets: torch.Tensor, pad: int = 4) -> torch.Tensor:
    return augment(x, AugmentPlan(flips=flips, offsets=offsets, pad=pad))


@pytest.mark.parametrize("pad", [4, 2])
@pytest.mark.parametrize("prepared", [False, True])
def test_augment_matches_per_image_reference(pad: int, prepared: bool) -> None:
    g = torch.Generator().manual_seed(1)
    x = _images(64)
    index = torch.randint(0, 64, (40,), generator=g)  # with repeats, any order
    flips = torch.randint(0, 2, (40,), generator=g).bool()
    offsets = torch.randint(0, 2 * pad + 1, (40, 2), generator=g)
    out = augment(PaddedImages(x, pad) if prepared else x, AugmentPlan(flips, offsets, index, pad))
    assert out.shape == (40, 3, 32, 32) and out.dtype == torch.uint8 and out.is_contiguous()
    ref = torch.stack([_reference_crop_flip(x[index[i]], bool(flips[i]), int(offsets[i, 0]), int(offsets[i, 1]),
                                            pad) for i in range(40)])
    assert torch.equal(out, ref)
    assert augment(x, AugmentPlan(flips[:0], offsets[:0], index[:0], pad)).shape == (0, 3, 32, 32)


def test_crop_and_flip_really_move_pixels() -> None:
    x = _images(2, seed=5)
    same = _crop_flip(x, torch.tensor([False, False]), torch.tensor([[4, 4], [4, 4]]))
    assert torch.equal(same, x)
    flipped = _crop_flip(x, torch.tensor([True, False]), torch.tensor([[4, 4], [4, 4]]))
    assert torch.equal(flipped[0], x[0].flip(-1)) and torch.equal(flipped[1], x[1])
    corner = _crop_flip(x, torch.tensor([False, False]), torch.tensor([[0, 0], [8, 8]]))
    assert torch.equal(corner[0, :, 4:, 4:], x[0, :, :28, :28])  # shifted down-right by 4
    assert (corner[0, :, :4, :] == 0).all() and (corner[0, :, :, :4] == 0).all()  # zero border
    assert torch.equal(corner[1, :, :28, :28], x[1, :, 4:, 4:])  # shifted up-left by 4
    assert (corner[1, :, 28:, :] == 0).all() and (corner[1, :, :, 28:] == 0).all()
    assert not torch.equal(corner, x)
    with pytest.raises(ValueError, match="plan.flips must be"):
        _crop_flip(x, torch.tensor([True]), torch.tensor([[4, 4], [4, 4]]))
    with pytest.raises(ValueError, match="padded by 4, the plan by 2"):
        augment(PaddedImages(x, 4), AugmentPlan(torch.tensor([True, False]), torch.zeros(2, 2, dtype=torch.int64),
                                                torch.arange(2), pad=2))


@pytest.mark.parametrize("mode", NORMALIZE_MODES)
def test_normalizer_statistics(mode: str) -> None:
    x = _images(300, seed=2)
    x[:, 0] //= 2  # make the channels differ
    norm = Normalizer(mode, x)
    xd = x.double() / 255
    if mode == "seed":
        assert norm.mean.shape == (3, 32, 32)
        torch.testing.assert_close(norm.mean.double(), xd.mean(0), rtol=0, atol=1e-6)
        ref = xd - xd.mean(0)
    else:
        mean, std = xd.mean((0, 2, 3), keepdim=True), xd.std((0, 2, 3), unbiased=False, keepdim=True)
        torch.testing.assert_close(norm.mean.double(), mean[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(norm.std.double(), std[0], rtol=0, atol=1e-6)
        ref = (xd - mean) / std
        out = norm(x).double()
        torch.testing.assert_close(out.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-5)
        torch.testing.assert_close(out.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64),
                                   rtol=0, atol=1e-5)
    out = norm(x[:10])
    assert out.dtype == torch.float32 and out.shape == (10, 3, 32, 32)
    torch.testing.assert_close(out.double(), ref[:10], rtol=0, atol=1e-5)
    assert {k for k, _ in norm.named_buffers()} >= {"mean", "std"}
    cl = norm(x[:10].contiguous(memory_format=torch.channels_last))
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.equal(cl, out)
    with pytest.raises(ValueError, match="unknown normalisation mode 'zca'.*seed, standard"):
        Normalizer("zca", x)


def _collect(loader: DeviceLoader, epoch: int = 0, start: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return list(loader.batches(epoch, start))


def _loader(split: Split, bs: int, **kw) -> DeviceLoader:
    kw.setdefault("train", True)
    return DeviceLoader(split, bs, device="cpu", normalizer=Normalizer("seed", split.images), **kw)


def test_train_epoch_is_a_permutation_with_the_planned_augmentation() -> None:
    split = _split(50)
    loader = _loader(split, 8, augment=True, seed=3)
    assert len(loader) == 50 // 8
    batches = _collect(loader, epoch=2)
    assert len(batches) == 6 and all(x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 for x, _ in batches)
    ids = torch.cat([y for _, y in batches])
    perm, flips, offsets = epoch_plan(50, 3, 2, True)
    assert torch.equal(ids, perm[:48]) and len(set(ids.tolist())) == 48  # drop_last, no repeats
    expect = _crop_flip(split.images[perm[:48]], flips[:48], offsets[:48])
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), loader.normalizer(expect))
    # The augmentation changes the images (vs the plain normalised samples).
    plain = loader.normalizer(split.images[ids])
    assert not torch.equal(torch.cat([x for x, _ in batches]), plain)


def test_determinism_epochs_and_resume_start() -> None:
    split = _split(40)
    a, b = _loader(split, 8, augment=True, seed=7), _loader(split, 8, augment=True, seed=7)
    ea, eb = _collect(a, 1), _collect(b, 1)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(ea, eb, strict=True))
    other_epoch = torch.cat([y for _, y in _collect(a, 2)])
    other_seed = torch.cat([y for _, y in _collect(_loader(split, 8, augment=True, seed=8), 1)])
    first = torch.cat([y for _, y in ea])
    assert not torch.equal(first, other_epoch) and not torch.equal(first, other_seed)
    for k in (0, 2, 4, 5):
        tail = _collect(a, 1, start=k)
        assert len(tail) == 5 - k
        assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(tail, ea[k:], strict=True))
    with pytest.raises(ValueError, match="start=6"):
        a.batches(1, start=6)
    # Without augmentation the order is the same plan's permutation.
    plain = torch.cat([y for _, y in _collect(_loader(split, 8, augment=False, seed=7), 1)])
    assert torch.equal(plain, first)


@pytest.mark.parametrize("train", [True, False])
def test_ranks_together_equal_single_process(train: bool) -> None:
    split = _split(37)
    single = _collect(_loader(split, 8, train=train, augment=train, seed=1), 3)
    for world in (2, 4):
        per_rank = [_collect(_loader(split, 8, train=train, augment=train, seed=1, rank=r, world_size=world), 3)
                    for r in range(world)]
        if train:
            assert all(len(p) == len(single) for p in per_rank)
        for k, (x, y) in enumerate(single):
            parts = [p[k] for p in per_rank if k < len(p)]
            assert torch.equal(torch.cat([px for px, _ in parts]), x)
            assert torch.equal(torch.cat([py for _, py in parts]), y)


def test_eval_order_partial_batch_and_empty_rank_slices() -> None:
    split = _split(21)
    loader = _loader(split, 8, train=False)
    assert len(loader) == 3
    batches = _collect(loader)
    assert [len(y) for _, y in batches] == [8, 8, 5]
    assert torch.equal(torch.cat([y for _, y in batches]), torch.arange(21))
    torch.testing.assert_close(torch.cat([x for x, _ in batches]), loader.normalizer(split.images))
    # 4 ranks, local batch 2: the last global batch (5 images) gives ranks 0..2 rows, rank 3 gets one row less
    sizes = [[len(y) for _, y in _collect(_loader(split, 8, train=False, rank=r, world_size=4))] for r in range(4)]
    assert sizes == [[2, 2, 2], [2, 2, 2], [2, 2, 1], [2, 2]]
    empty = Split(torch.zeros(0, 3, 32, 32, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    none = DeviceLoader(empty, 8, device="cpu", normalizer=loader.normalizer, train=False)
    assert len(none) == 0 and _collect(none) == []


def test_channels_last_and_validation() -> None:
    split = _split(20)
    cl = _collect(_loader(split, 4, augment=True, channels_last=True), 0)
    std = _collect(_loader(split, 4, augment=True, channels_last=False), 0)
    for (x1, _), (x2, _) in zip(cl, std, strict=True):
        assert x1.is_contiguous(memory_format=torch.channels_last) and x2.is_contiguous()
        assert torch.equal(x1, x2)
    with pytest.raises(UserError, match="batch_size=21 is larger than the training split"):
        _loader(split, 21)
    assert len(_loader(split, 21, train=False)) == 1  # fine for evaluation
    with pytest.raises(UserError, match=r"not divisible by world_size=3"):
        _loader(split, 8, world_size=3)
    with pytest.raises(UserError, match="batch_size=0 must be positive"):
        _loader(split, 0)
    with pytest.raises(UserError, match="rank=2 / world_size=2"):
        _loader(split, 8, rank=2, world_size=2)


def _reference_epoch(split: Split, batch_size: int, seed: int, epoch: int, augment: bool, pad: int = 4
                     ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches of one epoch, written plainly: draw the permutation, then one flip bit and one
    crop offset per position, from the (seed, epoch) generator; then pad, crop and flip image by image."""
    g = epoch_generator(seed, epoch)
    n = len(split)
    perm = torch.randperm(n, generator=g)
    if augment:
        flips = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64).bool()
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g, dtype=torch.int64)
    batches = []
    for k in range(n // batch_size):
        ids = perm[k * batch_size:(k + 1) * batch_size]
        images = [split.images[i] for i in ids]
        if augment:
            pos = range(k * batch_size, (k + 1) * batch_size)
            images = [_reference_crop_flip(img, bool(flips[p]), int(offsets[p, 0]), int(offsets[p, 1]), pad)
                      for img, p in zip(images, pos, strict=True)]
        batches.append((torch.stack(images), split.labels[ids]))
    return batches


@pytest.mark.parametrize("augment_", [True, False])
def test_training_batches_are_bit_identical_to_a_plain_reference(augment_: bool) -> None:
    """Pins the training stream: the same (seed, epoch) gives the same images, crops and flips, bit for bit."""
    split = Split(_images(45, seed=9), torch.randint(0, 10, (45,), generator=torch.Generator().manual_seed(4)))
    loader = _loader(split, 8, augment=augment_, seed=11)
    for epoch in (0, 5):
        ref = _reference_epoch(split, 8, 11, epoch, augment_)
        got = _collect(loader, epoch)
        assert len(got) == len(ref) == 5
        for (x, y), (rx, ry) in zip(got, ref, strict=True):
            assert torch.equal(y, ry)
            assert torch.equal(x, loader.normalizer(rx))
        for world in (2, 4):  # each rank's rows of the same global batches
            for rank in range(world):
                part = _collect(_loader(split, 8, augment=augment_, seed=11, rank=rank, world_size=world), epoch)
                lb = 8 // world
                for (x, y), (rx, ry) in zip(part, ref, strict=True):
                    assert torch.equal(y, ry[rank * lb:(rank + 1) * lb])
                    assert torch.equal(x, loader.normalizer(rx[rank * lb:(rank + 1) * lb]))
