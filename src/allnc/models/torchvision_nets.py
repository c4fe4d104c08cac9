"""torchvision ResNet-50, ResNet-152 and ResNeXt-50 (32x4d) without their fc: 2048-d features.

Weights are never downloaded. ``model.pretrained`` may name a local ``state_dict`` file
(a torchvision checkpoint, with or without its ``fc``); it is loaded with a strict check of
the backbone's keys by ``load_backbone_state``, which serves every backbone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from ..errors import ConfigError
from .resnet_cifar import BACKBONES, Backbone, GlobalPool

# Keys of a classifier that a full-network checkpoint may carry and a backbone has not.
_HEAD_PREFIXES = ("fc.", "linear.", "classifier.", "head.")
# Wrappers that training scripts put around a state dict or its keys.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_KEY_PREFIXES = ("module.", "backbone.", "_orig_mod.")


class TorchvisionResNet(Backbone):
    """A torchvision ResNet whose ``fc`` is dropped; keys match torchvision's own names.

    ``in_channels`` other than 3 replaces the first convolution (freshly initialised).
    """

    def __init__(self, arch: str, in_channels: int = 3):
        super().__init__()
        ctor = {"resnet50": tv_resnet.resnet50, "resnet152": tv_resnet.resnet152,
                "resnext50": tv_resnet.resnext50_32x4d}[arch]
        net = ctor(weights=None)  # never downloads
        self.arch = arch
        self.in_channels = int(in_channels)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.pool = GlobalPool()
        self.out_dim = net.fc.in_features  # 2048

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.relu, self.maxpool]

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def init_weights(self, module: nn.Module) -> None:
        """torchvision's scheme: Kaiming-normal (fan-out) convolutions, BN weight 1, bias 0."""
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


@BACKBONES.register("resnet50")
def resnet50(in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet("resnet50", in_channels)


@BACKBONES.register("resnet152")
def resnet152(in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet("resnet152", in_channels)


@BACKBONES.register("resnext50")
def resnext50(in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet("resnext50", in_channels)


def _unwrap(obj: Any, path: str) -> Mapping[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in _WRAPPER_KEYS:
                if k in obj and isinstance(obj[k], Mapping):
                    obj = obj[k]
                    break
            else:
                break
    if not isinstance(obj, Mapping) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"model.pretrained={path!r} does not hold a state_dict (a mapping of tensors)")
    return obj


def load_backbone_state(backbone: Backbone, path: str) -> None:
    """Load a local state_dict file into ``backbone``; strict on the backbone's keys.

    Accepts a plain state dict or one wrapped under ``state_dict``/``model``; strips
    ``module.``/``backbone.`` key prefixes and drops classifier keys (``fc.*``, ``linear.*``)
    the backbone does not have. Any other missing or unexpected key is a ``ConfigError``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"model.pretrained={path!r}: no such file; give a local state_dict path "
            "(weights are never downloaded) or set model.pretrained=null"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise ConfigError(f"model.pretrained={path!r} could not be read by torch.load: {type(e).__name__}") from None
    sd = dict(_unwrap(obj, path))
    own = backbone.state_dict()
    fixed: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        key = k
        changed = True
        while changed:
            changed = False
            for pre in _KEY_PREFIXES:
                if key.startswith(pre) and key not in own:
                    key = key[len(pre):]
                    changed = True
        if key not in own and key.startswith(_HEAD_PREFIXES):
            continue
        fixed[key] = v
    missing = sorted(set(own) - set(fixed))
    unexpected = sorted(set(fixed) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise ConfigError(
            f"model.pretrained={path!r} does not match backbone '{type(backbone).__name__}' "
            f"keys: {'; '.join(parts)}; is it a checkpoint of the same architecture?"
        )
    bad = [k for k in own if own[k].shape != fixed[k].shape]
    if bad:
        k = bad[0]
        raise ConfigError(
            f"model.pretrained={path!r}: {len(bad)} tensors have the wrong shape "
            f"(e.g. {k}: {tuple(fixed[k].shape)} vs {tuple(own[k].shape)}); is it the same architecture, model.width and number of input channels?"
        )
    backbone.load_state_dict(fixed, strict=True)
