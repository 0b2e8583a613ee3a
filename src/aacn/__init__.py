"""aacn: attention-augmented convolutional networks on CIFAR.

Subpackages: ``aacn.nn`` (relative attention, AAConv2d), ``aacn.models`` (ResNet, WRN, registry),
``aacn.data`` (CIFAR download/verify/load, on-device augmentation), ``aacn.train`` (loop, recipes,
records), ``aacn.experiments`` (table presets, sweeps, reports), ``aacn.viz`` (curves, attention maps).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``aacn.load_model`` (see :func:`aacn.inference.load_model`), imported on first use so that ``import aacn``
    stays light (no torch)."""
    if name == "load_model":
        from aacn.inference import load_model

        return load_model
    raise AttributeError(f"module 'aacn' has no attribute {name!r}")
