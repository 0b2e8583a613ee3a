"""aacn: attention-augmented convolutional networks on CIFAR.

Subpackages: ``aacn.nn`` (relative attention, AAConv2d), ``aacn.models`` (ResNet, WRN, registry),
``aacn.data`` (CIFAR download/verify/load, on-device augmentation), ``aacn.train`` (loop, recipes,
records), ``aacn.experiments`` (table presets, sweeps, reports), ``aacn.viz`` (curves, attention maps).
"""

__version__ = "0.1.0"
