"""Shared fixtures: tiny CIFAR data made inside the tests (never the network, never ../shared)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
def _few_threads(monkeypatch):
    """Keep each test to the machine's two cores and away from the user's data cache."""
    import torch

    torch.set_num_threads(2)
    monkeypatch.setenv("AACN_DATA", "/nonexistent-aacn-test-data")
