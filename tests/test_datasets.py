"""The dataset seam: one registry entry makes a dataset of another size usable end to end (train, evaluate,
export, attention maps), and CIFAR, loaded through the registry, gives exactly the batches its raw files define."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from aacn.cli import main
from aacn.config import RunConfig
from aacn.data import integrity
from aacn.data.augment import Normalizer
from aacn.data.cifar import load_cifar
from aacn.data.loader import DeviceLoader, epoch_plan
from aacn.data.registry import DATASETS, Dataset, load_data
from aacn.data.splits import Split, Splits, first_images, split_train_val
from aacn.errors import OptionError, UserError
from aacn.inference import load_model
from aacn.train import distributed
from aacn.train.build import build_loaders, build_model

SHAPE, CLASSES = (3, 24, 24), 7


def load_tiny24(data_dir, *, val_size, split_seed, subset, download, progress) -> Splits:
    """Synthetic, learnable 3x24x24 images of 7 classes (each class a mean image of 6x6-pixel blocks, plus noise):
    300 training and 100 test images, made here, not read from ``data_dir``."""
    blocks = np.random.default_rng(7).uniform(40, 215, size=(CLASSES, 3, 4, 4))
    means = np.kron(blocks, np.ones((1, 1, 6, 6)))

    def split(n: int, seed: int) -> Split:
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, CLASSES, size=n)
        images = np.clip(means[labels] + rng.normal(0, 30, size=(n, *SHAPE)), 0, 255).astype(np.uint8)
        return Split(torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)))

    train, val = split_train_val(split(300, 1), val_size, split_seed)
    train, test = first_images(train, subset, "tiny24", val_size), split(100, 2)
    fingerprints = {name: integrity.split_fingerprint(s.images, s.labels)
                    for name, s in (("train", train), ("val", val), ("test", test))}
    return Splits("tiny24", [f"class{i}" for i in range(CLASSES)], train, val, test,
                  {"label": "not official", "differing_files": ["synthetic"], "fingerprint": fingerprints})


@pytest.fixture(scope="module")
def tiny24():
    """The one place the dataset is added: its registry entry."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(DATASETS, "tiny24", Dataset(load_tiny24, num_classes=CLASSES, image_shape=SHAPE,
                                                  about="synthetic 24x24"))
        yield "tiny24"


@pytest.fixture(scope="module")
def tiny24_run(tiny24, tmp_path_factory) -> Path:
    """A finished 3-epoch run of a tiny AA-WRN (paper placement) on tiny24, trained through the CLI."""
    out = tmp_path_factory.mktemp("runs") / "tiny24"
    assert main(["train", "--dataset", tiny24, "--model", "wrn-10-1", "--base-width", "4", "--attention", "paper",
                 "--num-heads", "2", "--min-key-depth-per-head", "2", "--attention-impl", "chunked", "--epochs", "3",
                 "--val-size", "50", "--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--no-progress",
                 "--out", str(out)]) == 0
    return out


def _test_images(run_dir: Path, n: int) -> torch.Tensor:
    config = RunConfig.load(run_dir / "config.json")
    data = load_data(config, progress=False)
    return Normalizer(config.normalize, data.train.images)(data.test.images[:n])


def test_a_registered_dataset_of_another_size_trains(tiny24_run):
    import json

    rows = [json.loads(line) for line in (tiny24_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and rows[-1]["train_loss"] < rows[0]["train_loss"]
    record = json.loads((tiny24_run / "config.json").read_text())
    assert record["config"]["dataset"] == "tiny24"
    resolutions = {tuple(layer["resolution"]) for layer in record["info"]["attention_layers"]}
    assert max(resolutions) == (24, 24)  # the relative embeddings are sized for the dataset's images
    model = load_model(tiny24_run)
    assert model.conv1.in_channels == 3 and model.fc.out_features == CLASSES
    assert model(_test_images(tiny24_run, 4)).shape == (4, CLASSES)


def test_a_registered_dataset_of_another_size_evaluates(tiny24_run, capsys):
    import json

    from aacn.inference import evaluate_run

    recorded = json.loads((tiny24_run / "results.json").read_text())
    got = evaluate_run(tiny24_run, device="cpu")
    assert got["dataset"] == "tiny24"
    assert got["test_acc"] == pytest.approx(recorded["test_acc"]) and got["test_loss"] == pytest.approx(
        recorded["test_loss"], rel=1e-5)
    assert main(["evaluate", str(tiny24_run), "--device", "cpu"]) == 0
    assert "tiny24" in capsys.readouterr().out
    assert main(["evaluate", str(tiny24_run), "--dataset", "cifar10", "--device", "cpu"]) == 2  # 10 classes, 32x32
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "(3, 32, 32)" in err and "(3, 24, 24)" in err, err


def test_a_registered_dataset_of_another_size_exports(tiny24_run, capsys):
    assert main(["export", str(tiny24_run)]) == 0
    out = capsys.readouterr().out
    assert "input: float32 (N, 3, 24, 24)" in out and "output: (N, 7) logits" in out
    images = _test_images(tiny24_run, 3)
    loaded = torch.export.load(tiny24_run / "model.pt2").module()
    with torch.no_grad():
        expected = load_model(tiny24_run)(images)
    torch.testing.assert_close(loaded(images), expected, rtol=1e-5, atol=1e-5)


def test_a_registered_dataset_of_another_size_draws_attention_maps(tiny24_run):
    from aacn.viz.attention_maps import compute_attention_maps

    maps = compute_attention_maps(tiny24_run, image=3)
    assert maps.image.shape == (24, 24, 3) and maps.label.startswith("class")
    assert all(0 <= x < 24 and 0 <= y < 24 for x, y in maps.pixels)  # the default pixels, scaled to 24x24
    torch.testing.assert_close(torch.from_numpy(maps.weights).sum((-2, -1)), torch.ones(maps.weights.shape[:2]))


def test_the_dataset_decides_the_models_inputs_and_outputs(monkeypatch):
    def gray(data_dir, **kwargs):
        raise AssertionError("building a model must not load the data")

    monkeypatch.setitem(DATASETS, "gray20", Dataset(gray, num_classes=3, image_shape=(1, 20, 20)))
    config = RunConfig(dataset="gray20", model="resnet34", base_width=4, attention="seed", num_heads=2,
                       min_key_depth_per_head=2, attention_impl="chunked")
    model = build_model(config)
    assert model.conv1.in_channels == 1 and model(torch.zeros(2, 1, 20, 20)).shape == (2, 3)
    assert {tuple(layer["resolution"]) for layer in model.attention_layers} == {(3, 3)}  # layer4: 20 -> 10 -> 5 -> 3
    assert RunConfig.from_dict(config.to_dict()) == config  # config.json need not record what the dataset decides
    with pytest.raises(ValueError, match="square image_shape"):
        Dataset(gray, num_classes=3, image_shape=(1, 20, 16))


def test_an_unknown_dataset_is_one_line_naming_the_registered_ones(tiny24, tmp_path, capsys):
    for argv in (["train", "--dataset", "mnist", "--out", str(tmp_path / "x")],
                 ["evaluate", str(tmp_path), "--dataset", "mnist"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and len(err.splitlines()) == 1, err
        assert "'mnist'" in err and all(name in err for name in ("cifar10", "cifar100", "tiny24")), err
    expected = r"^dataset must be one of \['cifar10', 'cifar100', 'tiny24'\], got 'mnist'$"
    with pytest.raises(OptionError, match=expected):
        RunConfig(dataset="mnist")
    assert RunConfig(dataset="tiny24").dataset == "tiny24"  # a registered name is a valid option value


def test_a_loader_that_does_not_match_its_entry_is_refused(monkeypatch):
    monkeypatch.setitem(DATASETS, "liar", Dataset(load_tiny24, num_classes=CLASSES, image_shape=(3, 32, 32)))
    with pytest.raises(UserError, match=r"^the train split of liar holds images of shape \(3, 24, 24\), but the "
                                        r"dataset is registered with image_shape=\(3, 32, 32\)"):
        load_data(RunConfig(dataset="liar", val_size=50), progress=False)
    monkeypatch.setitem(DATASETS, "few", Dataset(load_tiny24, num_classes=5, image_shape=SHAPE))
    with pytest.raises(UserError, match=r"labels outside \[0, 4\]"):
        load_data(RunConfig(dataset="few", val_size=50), progress=False)


# ------------------------------------------------------------------------------------ CIFAR, bit for bit
def _raw_cifar10(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The training and test images (uint8 (N, 3, 32, 32)) and labels, read straight from the pickles."""
    def read(name):
        batch = pickle.loads((folder / name).read_bytes(), encoding="bytes")
        return np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(batch[b"labels"], np.int64)

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    test = read("test_batch")
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), *test


def _augmented(images: np.ndarray, flips: np.ndarray, offsets: np.ndarray, pad: int = 4) -> np.ndarray:
    """Zero-pad by ``pad``, crop at ``offsets``, mirror where ``flips``: image by image, in numpy."""
    out = []
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    for image, flip, (row, col) in zip(padded, flips, offsets, strict=True):
        crop = image[:, row:row + 32, col:col + 32]
        out.append(crop[:, :, ::-1] if flip else crop)
    return np.stack(out)


@pytest.mark.parametrize("normalize", ["standard", "seed"])
def test_cifar_through_the_registry_gives_the_batches_its_raw_files_define(tiny_cifar10, normalize):
    config = RunConfig(dataset="cifar10", data_dir=str(tiny_cifar10), val_size=100, split_seed=3, subset=350,
                       batch_size=64, seed=5, normalize=normalize, device="cpu", progress=False)
    data = load_data(config)
    x, y, x_test, y_test = _raw_cifar10(tiny_cifar10 / "cifar-10-batches-py")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(3)).numpy()  # the documented split
    train_idx, val_idx = perm[100:][:350], perm[:100]
    for split, images, labels in ((data.train, x[train_idx], y[train_idx]), (data.val, x[val_idx], y[val_idx]),
                                  (data.test, x_test, y_test)):
        assert np.array_equal(split.images.numpy(), images) and np.array_equal(split.labels.numpy(), labels)
    old = load_cifar("cifar10", tiny_cifar10, val_size=100, split_seed=3, subset=350, progress=False)
    assert data.provenance == old.provenance and data.provenance["label"] == "not official"

    loaders = build_loaders(data, config, distributed.Context(device=torch.device("cpu")))
    reference = Normalizer(normalize, torch.from_numpy(x[train_idx]))
    for name in ("mean", "std", "scale", "shift"):
        assert torch.equal(getattr(loaders.normalizer, name), getattr(reference, name))
    for epoch in (0, 1):
        order, flips, offsets = (t.numpy() for t in epoch_plan(350, 5, epoch, True))
        batches = list(loaders.train.batches(epoch))
        assert len(batches) == 350 // 64
        for k, (images, labels) in enumerate(batches):
            rows = slice(k * 64, (k + 1) * 64)
            idx = train_idx[order[rows]]
            expected = _augmented(x[idx], flips[rows], offsets[rows])
            assert torch.equal(images, reference(torch.from_numpy(expected))) and np.array_equal(labels.numpy(), y[idx])
    test = list(loaders.test.batches(0))
    images, labels = torch.cat([b for b, _ in test]), torch.cat([t for _, t in test])
    assert torch.equal(images, reference(torch.from_numpy(x_test))) and np.array_equal(labels.numpy(), y_test)
    # and the loader the code used before the registry (load_cifar, the default padding) gives the same batches
    before = DeviceLoader(old.train, 64, device="cpu", normalizer=reference, train=True, augment=True, seed=5)
    for epoch in (0, 1):
        for (a, la), (b, lb) in zip(before.batches(epoch), loaders.train.batches(epoch), strict=True):
            assert torch.equal(a, b) and torch.equal(la, lb)
