"""A network's options, each declared once: :class:`ModelOptions`, and :class:`ModelConfig`, what
``create_model`` builds.

The fields are named as ``create_model``'s keyword arguments and the CLI's options (``attention`` for the
placement, ``attention_impl`` for the implementation). A training run's :class:`aacn.config.RunConfig` inherits
:class:`ModelOptions`, so every model option is a run option (and a flag) without a second declaration. The
checks refuse, when a config is built, what no network can be: an unknown placement, a fraction out of range, a
model whose size would only exhaust memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from aacn.errors import OptionError
from aacn.models.placement_rules import PLACEMENTS, describe_placements
from aacn.nn.functional import IMPLS
from aacn.options import at_most, is_real, option, options_of, positive_int, probability, validate

__all__ = ["STEMS", "ModelOptions", "ModelConfig", "ATTENTION_OPTIONS"]

STEMS = ("cifar", "imagenet")
MAX_WRN_DEPTH = 1000  # layers of a wrn-D-K; WRN-28-10 has 28
MAX_PARAMS = 10**9  # about 4 GB of float32 weights: ~27x WRN-28-10
_WRN = re.compile(r"wrn-(\d{1,12})-(\d{1,12})")


def model_name(value: Any) -> str | None:
    if not (isinstance(value, str) and value.strip()):
        return "must be a model name such as 'resnet34' or 'wrn-28-10'"
    match = _WRN.fullmatch(value.strip().lower())
    if match and int(match.group(1)) > MAX_WRN_DEPTH:
        return f"has depth {int(match.group(1)):,}, beyond the limit of {MAX_WRN_DEPTH:,} layers"
    if value.strip().lower().startswith("wrn-") and not match:
        return "must be wrn-D-K with a depth D and a widen factor K of at most 12 digits, e.g. wrn-28-10"
    return None


def estimated_params(config: ModelOptions) -> float:
    """Roughly the parameters of ``config``'s network (its 3x3 convolutions), computed without building it."""
    match = _WRN.fullmatch(config.model.strip().lower())
    if match:
        blocks, widen = max(0, (int(match.group(1)) - 4) // 6), int(match.group(2))
        width = (config.base_width or 16) * widen
        return 9.0 * 2 * blocks * sum((width * m) ** 2 for m in (1, 2, 4))
    if config.model.strip().lower() == "resnet34":
        return 21.3e6 * ((config.base_width or 64) / 64) ** 2
    return 0.0


def placement(value: Any) -> str | None:
    if (isinstance(value, str) and value) or (
            isinstance(value, tuple) and value and all(isinstance(n, str) and n for n in value)):
        return None
    return f"must be {describe_placements()} or a list of block names"


def placement_help() -> str:  # read when shown: a placement added to the table is named
    return f"attention placement: {' | '.join(PLACEMENTS)} | comma-separated block or conv names"


def fraction(value: Any) -> str | None:
    if not (is_real(value) and 0 < value <= 1):
        return "must be a fraction in (0, 1] (e.g. 0.2; 1 = fully attentional)"
    return None if value >= 1e-3 else "must be at least 0.001 (no attention layer is that thin)"


@dataclass(frozen=True)
class ModelOptions:
    """The options of a network. ``base_width``, ``stem`` and ``dropout`` are ``None`` for "the family's own"
    (ResNet base width 64 and the CIFAR stem; WRN base width 16 and no dropout); ``stem`` applies to ResNets
    only, ``dropout`` to WRNs only. The attention options are Bello et al. 2019's (Nh, kappa, upsilon)."""

    model: str = option("resnet34", "resnet34 or wrn-D-K, e.g. wrn-28-10", group="arch", check=model_name)
    base_width: int | None = option(None, "stage-1 width: narrows or widens the network",
                                    check=at_most(positive_int, 4096), default_text="the model family's")
    stem: str | None = option(None, "ResNet stem", choices=STEMS, default_text="cifar")
    dropout: float | None = option(None, "WRN dropout between the convs of a block", check=probability,
                                   default_text="0")
    attention: str | tuple[str, ...] = option("none", placement_help, group="arch.attention", check=placement,
                                              metavar="PLACEMENT")
    relative: bool = option(True, "relative position embeddings in the attention", flag="--no-relative")
    num_heads: int = option(8, "Nh, attention heads", check=at_most(positive_int, 1024))
    kappa: float = option(0.2, "dk / F_out, key depth as a fraction of the conv's output channels", check=fraction)
    upsilon: float = option(0.1, "dv / F_out, attention channels as a fraction of the conv's outputs",
                            check=fraction)
    min_key_depth_per_head: int = option(20, "smallest key depth per head", check=at_most(positive_int, 4096))
    attention_impl: str = option("auto", "how attention is computed (the same numbers; triton: CUDA only)",
                                 choices=IMPLS, neutral=True)

    def __post_init__(self) -> None:
        validate(self)
        params = estimated_params(self)
        if params > MAX_PARAMS:  # refused before anything is built: it would only exhaust memory
            raise OptionError("model", f"model {self.model} (base width {self.base_width or 'default'}) would have "
                                       f"about {params:.1e} parameters, beyond the limit of {MAX_PARAMS:.0e}; "
                                       "choose a smaller depth, widen factor or --base-width")


@dataclass(frozen=True)
class ModelConfig(ModelOptions):
    """A network of the model registry: ``aacn.models.create_model(ModelConfig(...))`` builds it (a run's
    ``config.arch`` takes ``num_classes``, ``input_size`` and ``in_channels`` from its dataset)."""

    num_classes: int = option(10, "classifier outputs", group="arch", check=positive_int, cli=False, sweep=False)
    input_size: int = option(32, "side of the square input images", check=positive_int, cli=False, sweep=False)
    in_channels: int = option(3, "channels of the input images", check=positive_int, cli=False, sweep=False)


ATTENTION_OPTIONS = tuple(name for name, opt in options_of(ModelOptions).items() if opt.group == "arch.attention")
"""The options that shape attention (``apply_attention``'s keywords)."""
