"""Relative-position indexing shared by every attention implementation.

A table ``r`` of shape ``(2n-1, d)`` embeds the offsets ``-(n-1) .. n-1`` along one grid axis of length ``n``:
row ``j - i + n - 1`` holds the embedding of key position ``j`` seen from query position ``i``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rel_index"]


def rel_index(n: int, device: torch.device | None = None) -> Tensor:
    """``(n, n)`` long tensor ``idx[i, j] = j - i + n - 1``: row of a ``(2n-1, d)`` table for query i, key j."""
    pos = torch.arange(n, device=device)
    return pos[None, :] - pos[:, None] + (n - 1)
