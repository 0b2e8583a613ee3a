"""aacn.models: ResNet-34 and WRN-D-K for CIFAR, with attention-augmented convs placed by name.

Entry points: :func:`create_model` (``"resnet34"``, ``"wrn-D-K"``) and :func:`list_models`; a network's options:
:class:`ModelConfig` (:mod:`aacn.models.config`). Where attention goes and how deep it is:
:mod:`aacn.models.placement`; the named placements: :mod:`aacn.models.placement_rules`.
"""

from aacn.models.config import ModelConfig, ModelOptions
from aacn.models.placement import ConvSlot, apply_attention, attention_depths, resolve_placement
from aacn.models.placement_rules import PLACEMENTS, Rule
from aacn.models.registry import create_model, list_models, model_config, model_family, register_model
from aacn.models.resnet import BasicBlock, ResNet, resnet34
from aacn.models.wide_resnet import WideBasicBlock, WideResNet, wide_resnet

__all__ = [
    "create_model",
    "ModelConfig",
    "ModelOptions",
    "list_models",
    "register_model",
    "model_config",
    "model_family",
    "PLACEMENTS",
    "Rule",
    "ConvSlot",
    "apply_attention",
    "attention_depths",
    "resolve_placement",
    "ResNet",
    "BasicBlock",
    "resnet34",
    "WideResNet",
    "WideBasicBlock",
    "wide_resnet",
]
