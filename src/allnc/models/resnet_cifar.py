"""The backbone interface and the small-image ResNets.

``Backbone`` is the base class of every feature extractor in the package: a stem, a list
of stages (each an ``nn.Sequential`` of residual blocks) and a global pool. ``forward(x)``
returns the pooled ``(B, out_dim)`` feature; ``split(mode)`` cuts the network into a
shared trunk and a branch (the modules are the backbone's own, not copies), used by the
two-branch network of GBBN.

``resnet32``: the CIFAR ResNet-32 of LDAM-DRW and BBN (He et al. 2016, section 4.2):
a 3x3 convolution with 16 channels, three stages of 5 BasicBlocks of widths 16/32/64
(strides 1/2/2), option-A shortcuts (stride-2 subsampling and zero-padded channels, no
parameters), global average pooling to a 64-d feature. 464,154 parameters with a 10-class
linear classifier (464,154 - 650 = 463,504 for the backbone alone). ``width`` scales every
stage: features are ``4 * width``-dimensional.

``resnet_small``: the same design with one block per stage (by default) for 28x28
grey-scale images such as Fashion-MNIST.

``stem_stride`` (``model.stem_stride``, default 1): the stride of the 3x3 stem convolution.
2 halves the resolution every stage runs at (28x28 -> 14/7/4), about a quarter of the
convolution work per image; the fast CPU demo uses it.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import Registry

BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")

SPLIT_MODES = ("last_block", "last_stage")


class GlobalPool(nn.Module):
    """Global average pooling and flatten: (B, C, H, W) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class Backbone(nn.Module):
    """Base class: ``stem_modules()`` then ``stages()`` then ``pool``.

    Subclasses set ``out_dim`` and ``self.pool`` (a ``GlobalPool``), register their modules,
    and implement ``stem_modules`` and ``stages``; ``forward`` and ``split`` are shared, so
    that the split network runs exactly the same operations as ``forward``.
    """

    out_dim: int

    def stem_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def stages(self) -> list[nn.Sequential]:
        raise NotImplementedError

    def init_weights(self, module: nn.Module) -> None:
        """(Re-)initialise every layer inside ``module`` with this backbone's scheme."""
        for m in module.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.stem_modules():
            x = m(x)
        for stage in self.stages():
            x = stage(x)
        return self.pool(x)

    def split(self, mode: str = "last_block") -> tuple[nn.Sequential, nn.Sequential]:
        """``(trunk, branch)`` with ``branch(trunk(x))`` equal to ``forward(x)``.

        ``last_block``: the branch is the last residual block of the last stage (BBN's
        ResNet-32: the conventional and re-balancing blocks), plus pooling.
        ``last_stage``: the branch is the whole last stage, plus pooling.
        The returned modules hold this backbone's own layers (shared parameters).
        """
        stages = self.stages()
        last = stages[-1]
        if mode == "last_block":
            blocks = list(last.children())
            trunk = nn.Sequential(*self.stem_modules(), *stages[:-1], *blocks[:-1])
            branch = nn.Sequential(blocks[-1], self.pool)
        elif mode == "last_stage":
            trunk = nn.Sequential(*self.stem_modules(), *stages[:-1])
            branch = nn.Sequential(last, self.pool)
        else:
            raise ConfigError(f"branch split mode {mode!r} is not one of: {', '.join(SPLIT_MODES)}")
        return trunk, branch

    def fresh_copy(self, module: nn.Module) -> nn.Module:
        """A deep copy of ``module`` (same structure) with a fresh initialisation."""
        new = copy.deepcopy(module)
        self.init_weights(new)
        return new


# ----------------------------------------------------------------------- CIFAR ResNets
class ShortcutA(nn.Module):
    """Option-A shortcut of He et al. (2016): subsample by ``stride``, zero-pad channels.

    No parameters. The ``out - in`` extra channels are split between the front and the
    back (``planes // 4`` on each side for the standard doubling, as LDAM's code).
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        if out_planes < in_planes:
            raise ValueError("option-A shortcut cannot reduce channels")
        self.stride = stride
        extra = out_planes - in_planes
        self.pad_front = extra // 2
        self.pad_back = extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_front or self.pad_back:
            x = F.pad(x, (0, 0, 0, 0, self.pad_front, self.pad_back))
        return x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = ShortcutA(in_planes, planes, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(Backbone):
    """3x3 stem, stages of BasicBlocks with widths ``width * (1, 2, 4, ...)``, GAP.

    ``blocks``: number of blocks per stage (``(5, 5, 5)`` is ResNet-32); the first stage has
    stride 1, later ones stride 2. Kaiming-normal initialisation (fan-in) of every
    convolution, as LDAM's ``_weights_init``; BN weight 1, bias 0.
    """

    def __init__(self, blocks: Sequence[int] = (5, 5, 5), width: int = 16, in_channels: int = 3,
                 stem_stride: int = 1):
        super().__init__()
        blocks = tuple(int(b) for b in blocks)
        if width < 1:
            raise ConfigError(f"model.width={width} must be at least 1")
        if in_channels < 1:
            raise ConfigError(f"in_channels={in_channels} must be at least 1")
        if not blocks or min(blocks) < 1:
            raise ConfigError(f"blocks per stage {blocks} must be at least 1 each")
        if int(stem_stride) not in (1, 2):
            raise ConfigError(f"model.stem_stride={stem_stride} must be 1 or 2")
        self.width = int(width)
        self.in_channels = int(in_channels)
        self.blocks = blocks
        self.stem_stride = int(stem_stride)
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=self.stem_stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        in_planes = width
        layers = []
        for i, n in enumerate(blocks):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(n):
                stage.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*stage))
        self.layers = nn.ModuleList(layers)
        self.pool = GlobalPool()
        self.out_dim = in_planes
        self.init_weights(self)

    def stem_modules(self) -> list[nn.Module]:
        return [self.conv1, self.bn1, self.relu]

    def stages(self) -> list[nn.Sequential]:
        return list(self.layers)  # type: ignore[arg-type]


@BACKBONES.register("resnet32")
def resnet32(width: int = 16, in_channels: int = 3, stem_stride: int = 1) -> CifarResNet:
    """CIFAR ResNet-32 (3 x 5 BasicBlocks); ``4 * width``-d features (64 by default)."""
    return CifarResNet((5, 5, 5), width=width, in_channels=in_channels, stem_stride=stem_stride)


@BACKBONES.register("resnet_small")
def resnet_small(width: int = 16, in_channels: int = 1, blocks: int | Sequence[int] = 1,
                 stem_stride: int = 1) -> CifarResNet:
    """Small ResNet for 28x28 grey images: 3 stages of ``blocks`` BasicBlocks, widths w/2w/4w."""
    if isinstance(blocks, int):
        blocks = (blocks, blocks, blocks)
    return CifarResNet(tuple(blocks), width=width, in_channels=in_channels, stem_stride=stem_stride)
