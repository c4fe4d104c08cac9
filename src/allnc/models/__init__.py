"""Backbones, classifier heads and the two-branch (GBBN) network.

- ``build_backbone(model_cfg, in_channels) -> Backbone``: ``forward(x) -> (B, out_dim)``
  pooled features, ``out_dim``, ``split(mode) -> (trunk, branch)``.
- ``build_classifier(kind, in_dim, num_classes, bias=True, etf_seed=0)``: a head with
  ``weight`` (K x d) and ``bias`` (tensor or None).
- ``BranchedNet(backbone, mode, share_branch)``: trunk + branches c and r.
- ``BACKBONES`` / ``CLASSIFIERS``: the registries (resnet32, resnet_small, resnet50,
  resnet152, resnext50; linear, normed, etf).
- ``freeze(backbone, rule)``: ``model.frozen`` (``FROZEN``), which parts of the backbone learn;
  ``refresh_last_block(backbone)``: ``model.fresh_last_block``, the last block started afresh.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from ..errors import ConfigError
from .branched import BranchedNet
from ..config_io import cfg_get
from .heads import CLASSIFIERS, ETFClassifier, NormedLinear, ProjectionMLP, build_classifier, simplex_etf
from .resnet_cifar import BACKBONES, SPLIT_MODES, Backbone, CifarResNet, ShortcutA, resnet32, resnet_small
from .torchvision_nets import TorchvisionResNet, load_backbone_state, resnet50, resnet152, resnext50

log = logging.getLogger(__name__)

#: model.frozen: which parts of the backbone learn; FIXED_TRUNK is the rule whose state has
#: another layout (its trunk's batch norms become fixed maps)
FIXED_TRUNK = "all_but_last_block"
FROZEN = ("none", "convs_but_last_block", FIXED_TRUNK)

# Backbones whose size is set by model.width (and whose stem stride by model.stem_stride).
_WIDTH_BACKBONES = ("resnet32", "resnet_small")

__all__ = [
    "BACKBONES",
    "CLASSIFIERS",
    "FIXED_TRUNK",
    "FROZEN",
    "SPLIT_MODES",
    "Backbone",
    "BranchedNet",
    "CifarResNet",
    "ETFClassifier",
    "NormedLinear",
    "ProjectionMLP",
    "ShortcutA",
    "TorchvisionResNet",
    "build_backbone",
    "build_classifier",
    "count_parameters",
    "freeze",
    "load_backbone_state",
    "refresh_last_block",
    "resnet32",
    "resnet50",
    "resnet152",
    "resnet_small",
    "resnext50",
    "simplex_etf",
]


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once; buffers such as a fixed ETF excluded)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def build_backbone(model_cfg: Any, in_channels: int) -> Backbone:
    """The backbone named by ``model_cfg.name``; ``model_cfg.width`` sizes the CIFAR/small
    ResNets and ``model_cfg.stem_stride`` sets their stem's stride (the torchvision nets ignore
    the width and refuse a stride other than 1); ``model_cfg.pretrained`` is an optional local
    state_dict file (never a download), loaded with a strict key check; then
    ``model_cfg.fresh_last_block`` starts the last block afresh and ``model_cfg.frozen`` fixes
    what should not learn."""
    name = str(cfg_get(model_cfg, "name", "resnet32"))
    factory = BACKBONES.get(name)
    kwargs: dict[str, Any] = {"in_channels": int(in_channels)}
    stem_stride = int(cfg_get(model_cfg, "stem_stride", 1))
    if name in _WIDTH_BACKBONES:
        kwargs["width"] = int(cfg_get(model_cfg, "width", 16))
        kwargs["stem_stride"] = stem_stride
    elif stem_stride != 1:
        raise ConfigError(f"model.stem_stride applies to {' and '.join(_WIDTH_BACKBONES)} only, not {name}; "
                          "remove it or pick one of those backbones")
    backbone = factory(**kwargs)
    pretrained = cfg_get(model_cfg, "pretrained", None)
    if pretrained:
        load_backbone_state(backbone, str(pretrained))
    if bool(cfg_get(model_cfg, "fresh_last_block", False)):
        refresh_last_block(backbone)
    freeze(backbone, str(cfg_get(model_cfg, "frozen", "none")))
    n = count_parameters(backbone)
    log.info("backbone %s: %d-d features, %d parameters (%.3fM)", name, backbone.out_dim, n, n / 1e6)
    return backbone


def refresh_last_block(backbone: Backbone) -> None:
    """Start the last residual block (the last stage's last block) afresh, each of its layers
    with PyTorch's own initialisation (``reset_parameters``; BN running statistics reset): a
    block built apart from the network, as MiSLAS's released Places-LT model puts a new block
    where the ImageNet-pretrained ResNet-152's last one was."""
    for m in backbone.stages()[-1][-1].modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def freeze(backbone: Backbone, rule: str) -> None:
    """``model.frozen``; the layers outside the backbone (heads, classifier) always learn.

    - ``none``: nothing changes.
    - ``convs_but_last_block``: every convolution's parameters stop learning except those of
      the last residual block (the last stage's last block); batch norm keeps learning (PaCo's
      Places-LT fine-tuning).
    - ``all_but_last_block``: the trunk before the last residual block is fixed: its
      parameters stop learning and each of its batch norms becomes a fixed affine map with the
      statistics it holds (torchvision's ``FrozenBatchNorm2d``), which no training mode moves;
      the last block learns whole (MiSLAS's Places-LT model: a frozen ResNet-152 under one
      trained block)."""
    if rule == "none":
        return
    if rule not in FROZEN:
        raise ConfigError(f"model.frozen={rule!r} is not one of {', '.join(FROZEN)}")
    last = backbone.stages()[-1][-1]
    keep = {id(p) for p in last.parameters()}
    fixed_trunk = rule == FIXED_TRUNK
    params = backbone.parameters() if fixed_trunk else (
        p for m in backbone.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))
    for p in params:
        if id(p) not in keep:
            p.requires_grad_(False)
    if not fixed_trunk:
        return
    inside = {id(m) for m in last.modules()}
    for name, m in list(backbone.named_modules()):
        if isinstance(m, nn.BatchNorm2d) and id(m) not in inside:
            backbone.set_submodule(name, _fixed_norm(m))


def _fixed_norm(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    """``bn`` as a fixed affine map: its weight, bias and running statistics as buffers."""
    fixed = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    fixed.weight.copy_(bn.weight.detach() if bn.affine else torch.ones(bn.num_features))
    fixed.bias.copy_(bn.bias.detach() if bn.affine else torch.zeros(bn.num_features))
    fixed.running_mean.copy_(bn.running_mean)
    fixed.running_var.copy_(bn.running_var)
    return fixed
