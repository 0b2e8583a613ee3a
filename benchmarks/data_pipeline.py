"""Images/s of the on-device batched pipeline (DeviceLoader) vs a plain per-image DataLoader pipeline.

Both pipelines do the same work per epoch: shuffle, random horizontal flip (p=0.5), zero-pad to 40×40,
random 32×32 crop, ``uint8 → float32`` normalisation. The baseline does it image by image with torch ops
in ``torch.utils.data.DataLoader`` workers (no torchvision); DeviceLoader does it with a few batched ops per
batch on the device (one row copy for shuffle+flip+pad+crop, see ``aacn.data.augment``). Both are measured
in the same run, on the same data, after a short warm-up, with timed epochs interleaved (median and best):
other processes competing for the CPU then hit all pipelines alike.

With several intra-op threads on a CPU that other processes keep busy, OpenMP's spin-waiting can make the
multi-threaded rows much slower than the 1-thread row; ``OMP_WAIT_POLICY=PASSIVE`` avoids that.

    python benchmarks/data_pipeline.py                      # 50k synthetic CIFAR-size images
    python benchmarks/data_pipeline.py --data-dir /tmp/cifar --num-workers 2 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from aacn.data import Split, load_cifar
from aacn.data.augment import Normalizer
from aacn.data.loader import DeviceLoader

PAD = 4


class PerImageCifar(Dataset):
    """The textbook pipeline: one image at a time — flip, pad, crop, normalise — all with torch ops."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = self.images[i]
        if torch.rand(()) < 0.5:
            img = img.flip(-1)
        img = F.pad(img, (PAD, PAD, PAD, PAD))
        oy, ox = torch.randint(0, 2 * PAD + 1, (2,)).tolist()
        img = img[:, oy:oy + 32, ox:ox + 32]
        return (img.float() / 255.0 - self.mean) / self.std, int(self.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Pipeline:
    """One configuration to time: ``epoch(e)`` returns an iterable of ``(images, labels)`` batches."""

    def __init__(self, name: str, epoch, device: torch.device, threads: int | None = None):
        self.name, self.epoch, self.device, self.threads = name, epoch, device, threads
        self.samples: list[float] = []  # images/s of each timed epoch

    def warm_up(self, batches: int) -> None:
        with self._threads():
            for i, _ in enumerate(self.epoch(-1)):
                if i + 1 >= batches:
                    break

    def time_epoch(self, e: int) -> None:
        with self._threads():
            _sync(self.device)
            t0, n = time.perf_counter(), 0
            for x, _ in self.epoch(e):
                n += x.shape[0]
            _sync(self.device)
            self.samples.append(n / (time.perf_counter() - t0))

    @contextlib.contextmanager
    def _threads(self):
        saved = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(saved)


def _loadavg() -> list[float] | None:
    """1/5/15-minute load averages (other processes competing for the CPU skew CPU timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def synthetic(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                 torch.randint(0, 10, (n,), generator=g))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--num-images", type=int, default=50_000, help="synthetic images (ignored with --data-dir)")
    p.add_argument("--data-dir", default=None, help="use the real CIFAR-10 training set from this folder")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, nargs="+", default=[2], help="DataLoader worker counts to try")
    p.add_argument("--device", default="cpu", help="device of the DeviceLoader (cpu, cuda, mps)")
    p.add_argument("--normalize", default="seed", choices=["seed", "standard"])
    p.add_argument("--repeats", type=int, default=3, help="timed epochs per pipeline (interleaved; median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed batches per pipeline first")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="torch intra-op thread counts to time the DeviceLoader with (the DataLoader workers "
                        "always use one thread each)")
    p.add_argument("--out", default="benchmarks/results/data_pipeline.json")
    args = p.parse_args(argv)

    if args.data_dir:
        data = load_cifar("cifar10", args.data_dir, val_size=0, download=False)
        split, source = data.train, f"{args.data_dir} ({data.provenance['label']} CIFAR-10)"
    else:
        split, source = synthetic(args.num_images), "synthetic"
    device = torch.device(args.device)
    load_before = _loadavg()
    norm = Normalizer(args.normalize, split.images)
    print(f"data: {source}, {len(split)} images; batch {args.batch_size}; device {device}; "
          f"torch {torch.__version__}; {os.cpu_count()} CPUs; load average {_loadavg()}")

    pipelines = []
    for w in args.num_workers:
        ds = PerImageCifar(split.images, split.labels, norm.mean, norm.std)
        dl = DataLoader(ds, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=w,
                        persistent_workers=w > 0, generator=torch.Generator().manual_seed(0))
        name = f"DataLoader per-image, {w} workers"
        pipelines.append(Pipeline(name, lambda _e, dl=dl: dl, torch.device("cpu")))
    for threads in args.threads:
        for augment in (True, False):
            loader = DeviceLoader(split, args.batch_size, device=device, normalizer=norm, train=True,
                                  augment=augment)
            name = f"DeviceLoader ({device.type}, {threads} thread{'s' * (threads > 1)}), augment " + (
                "on" if augment else "off")
            pipelines.append(Pipeline(name, loader.batches, device, threads))
    for pl in pipelines:
        pl.warm_up(args.warmup)
    for r in range(args.repeats):  # interleaved, so that load from other processes hits all pipelines alike
        for pl in pipelines:
            pl.time_epoch(r)

    rows = [{"pipeline": pl.name, "threads": pl.threads, "images_per_s": statistics.median(pl.samples),
             "images_per_s_best": max(pl.samples), "images_per_s_each": pl.samples} for pl in pipelines]
    for r in rows:
        r["ratio_vs_first"] = r["images_per_s"] / rows[0]["images_per_s"]
        r["ratio_best_vs_first_best"] = r["images_per_s_best"] / rows[0]["images_per_s_best"]
    width = max(len(r["pipeline"]) for r in rows)
    print(f"\n{args.repeats} interleaved epochs per pipeline; ratio = images/s over the first row's "
          f"(median with median, best with best)\n")
    print(f"| {'pipeline':<{width}} | images/s median | ratio | images/s best | ratio |")
    print(f"|{'-' * (width + 2)}|----------------:|------:|--------------:|------:|")
    for r in rows:
        print(f"| {r['pipeline']:<{width}} | {r['images_per_s']:15.0f} | {r['ratio_vs_first']:4.1f}x "
              f"| {r['images_per_s_best']:13.0f} | {r['ratio_best_vs_first_best']:4.1f}x |")

    result = {"benchmark": "data_pipeline", "source": source, "num_images": len(split), "device": str(device),
              "batch_size": args.batch_size, "normalize": args.normalize, "repeats": args.repeats,
              "torch": torch.__version__,
              "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": _loadavg(),
              "machine": platform.platform(),
              "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")
    return result


if __name__ == "__main__":
    main()
