"""Follow a run's config through the code: which aacn functions receive it, in call order, and how often the
trail goes back to a module it had already left.

A tiny CPU run (a 100-image CIFAR-format set written to a temporary folder, 1 epoch of a narrow WRN-10-1 with
one attention layer) is traced with :func:`sys.setprofile`; every call of an ``aacn`` function that has a
``RunConfig`` or a ``ModelConfig`` (the network's part) among its arguments is a stop. Consecutive stops in one
module are one visit; a *return* is a visit to a module the trail had already left. The count measures how far
a reader must jump to follow the config; it is not a timing::

    python benchmarks/config_trail.py            # stops, modules, returns
    python benchmarks/config_trail.py --list     # and the trail itself
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np


def write_tiny_cifar(root: Path) -> None:
    """100 training and 50 test images in the official python layout."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, count in [(f"data_batch_{k}", 20) for k in range(1, 6)] + [("test_batch", 50)]:
        labels = rng.integers(0, 10, size=count)
        data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                 b"filenames": [b"x.png"] * count}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = [n.encode() for n in ("airplane automobile bird cat deer dog frog horse ship truck").split()]
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))


def trail(config) -> list[tuple[str, str]]:
    """(module, function) of every aacn call that receives a RunConfig or a ModelConfig, in order."""
    from aacn.config import RunConfig
    from aacn.models.config import ModelConfig
    from aacn.train.loop import run

    stops: list[tuple[str, str]] = []

    def profile(frame, event, arg):
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith("aacn"):
            return
        code = frame.f_code
        args = [frame.f_locals.get(n) for n in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]]
        if any(isinstance(a, (RunConfig, ModelConfig)) for a in args):
            name = code.co_qualname
            if name.startswith("__create_fn__"):  # a dataclass's generated method: name its class
                name = f"{type(args[0]).__name__}.{code.co_name}"
            stops.append((module, name))

    sys.setprofile(profile)
    try:
        run(config)
    finally:
        sys.setprofile(None)
    return stops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="print the trail, one stop a line")
    args = parser.parse_args()
    from aacn.config import RunConfig

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_cifar(Path(tmp))
        config = RunConfig(model="wrn-10-1", attention="seed", num_heads=1, min_key_depth_per_head=4, epochs=1,
                           batch_size=32, val_size=20, data_dir=tmp, device="cpu", progress=False,
                           attention_impl="chunked", out=str(Path(tmp) / "run"))
        stops = trail(config)
    visits = [m for i, (m, _) in enumerate(stops) if i == 0 or stops[i - 1][0] != m]
    returns = sum(1 for i, m in enumerate(visits) if m in visits[:i])
    if args.list:
        for module, name in stops:
            print(f"  {module}:{name}")
    print(f"{len(stops)} stops in {len(set(m for m, _ in stops))} modules, {len(visits)} visits, "
          f"{returns} returns to a module already left")


if __name__ == "__main__":
    main()
