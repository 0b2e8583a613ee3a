"""aacn.nn: exact 2D relative self-attention (:mod:`aacn.nn.functional`) and the attention-augmented
convolution :class:`AAConv2d`."""

from aacn.nn import functional
from aacn.nn.aaconv import AAConv2d

__all__ = ["AAConv2d", "functional"]
