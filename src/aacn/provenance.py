"""Where a result came from: the code, the software stack and the device, as one JSON-able dict.

Every run record (``config.json`` and ``results.json``) holds :func:`environment`'s dict under
``"provenance"``, beside the data's own provenance (``aacn.data.Splits.provenance``), so a number can be
traced to the commit that produced it, the library versions and the hardware, and compared only with numbers
made on the same data.

The git commit is read where aacn runs from a checkout (an editable install); ``git_dirty`` says whether
tracked files differed from that commit. Both are ``None`` for an installed package or without git.
"""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

import aacn

__all__ = ["environment", "git_state", "device_description"]


def git_state(path: str | Path | None = None) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout holding ``path`` (default: aacn's source), or ``(None, None)``."""
    folder = Path(path) if path is not None else Path(aacn.__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (bool(status.strip()) if status is not None else None)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device | str) -> tuple[str, int]:
    """``(name, count)`` of the accelerator kind behind ``device``: the GPU model and how many, or the CPU."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device), torch.cuda.device_count()
    if device.type == "mps":
        return "Apple MPS", 1
    return _cpu_name(), 1


def environment(device: torch.device | str, **settings: Any) -> dict[str, Any]:
    """The provenance of a result computed on ``device``; ``settings`` (precision, compile, ...) are added as is."""
    commit, dirty = git_state()
    name, count = device_description(device)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "aacn_version": aacn.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": cudnn,
        "device": str(device),
        "device_name": name,
        "device_count": count,
        **settings,
    }
