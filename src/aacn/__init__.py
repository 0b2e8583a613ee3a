"""aacn: attention-augmented convolutional networks on CIFAR.

Subpackages, lowest layer first (a module imports only from its own layer or those below it):
``aacn.nn`` (relative attention, AAConv2d), ``aacn.models`` (ResNet, WRN, placements, registry), ``aacn.data``
(CIFAR download/verify/load, on-device augmentation) and ``aacn.config`` (a run's options); ``aacn.train`` (loop,
recipes, run directories); ``aacn.inference`` and ``aacn.export`` (trained runs); ``aacn.viz`` (curves, attention
maps); ``aacn.experiments`` (table presets, sweeps, reports); ``aacn.cli``.

This file defines only :data:`__version__`, so ``import aacn`` imports nothing else (no torch). Import what you use
from the module that defines it, e.g. ``from aacn.inference import load_model``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("aacn")  # the installed distribution's, declared once in pyproject.toml
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"
