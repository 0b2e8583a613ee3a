"""Shared fixtures: tiny CIFAR data made inside the tests (never the network, never files outside the repo)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

# Without a GPU, the Triton attention kernels (impl="triton") run in Triton's CPU interpreter. Triton reads this
# when the kernels are first loaded, which happens inside a test, after this line.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).parent))

from cifar_files import write_cifar10, write_cifar100  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory) -> Path:
    """A data dir holding an extracted ``cifar-10-batches-py`` with 500 train and 200 test images."""
    root = tmp_path_factory.mktemp("cifar10")
    write_cifar10(root)
    return root


@pytest.fixture(scope="session")
def tiny_cifar100(tmp_path_factory) -> Path:
    """A data dir holding an extracted ``cifar-100-python`` with 500 train and 200 test images."""
    root = tmp_path_factory.mktemp("cifar100")
    write_cifar100(root)
    return root


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """A fixed intra-op thread count, here and in subprocesses, and no access to the user's data cache.

    One thread by default: tiny models gain nothing from more, OpenMP's busy waiting makes two threads erratic on a
    loaded 2-core machine, and runs compared bit for bit (resume tests) must use the same thread count.
    ``AACN_TEST_THREADS=2 python -m pytest`` runs the whole suite with two threads, to check that no test depends
    on the thread count.
    """
    import torch

    threads = os.environ.get("AACN_TEST_THREADS", "1")
    torch.set_num_threads(int(threads))
    monkeypatch.setenv("OMP_NUM_THREADS", threads)
    monkeypatch.setenv("AACN_DATA", "/nonexistent-aacn-test-data")
