"""The two-branch feature extractor of GBBN (after BBN, Zhou et al. CVPR 2020).

A shared trunk and two branch blocks: the conventional branch c and the re-balancing
branch r. ``mode="last_block"`` gives each branch its own copy of the last residual block
of the last stage (BBN's ResNet-32 and ResNet-50); ``mode="last_stage"`` gives each branch
the whole last stage.

Training (``forward_both``): the instance-balanced batch goes through branch c, the
re-balanced batch through branch r. By default (``joint_trunk=True``) the trunk runs once
on the concatenation of the two batches when their image shapes match, so the trunk's
batch-norm layers normalise (and update their running statistics) with the union of both
batches; each branch's BN sees only its own batch. With ``joint_trunk=False`` the trunk
runs twice, once per batch, which is what BBN's released code does (two separate forward
passes of the network, one per branch).

Inference (``inference_features``): the same image goes through both branches and the
features are mixed, ``[a h_c ; (1 - a) h_r]``, the input of one classifier on
``2 * out_dim`` features; BBN's test-time mix is a = 0.5 (the method chooses a, see
``method.gbbn.inference_mix``).
"""
from __future__ import annotations

import torch
from torch import nn

from .resnet_cifar import Backbone


class BranchedNet(nn.Module):
    def __init__(
        self,
        backbone: Backbone,
        mode: str = "last_block",
        share_branch: bool = False,
        joint_trunk: bool = True,
        fresh_branch_r: bool = True,
    ):
        """Split ``backbone`` into a trunk and branch c (its own modules, shared, not
        copied); branch r is a deep copy of branch c's structure, freshly initialised with
        the backbone's scheme (``fresh_branch_r=False`` keeps branch c's weights as the
        starting point instead), or branch c itself when ``share_branch``."""
        super().__init__()
        trunk, branch = backbone.split(mode)
        self.mode = mode
        self.share_branch = bool(share_branch)
        self.joint_trunk = bool(joint_trunk)
        self.out_dim = int(backbone.out_dim)
        self.trunk = trunk
        self.branch_c = branch
        if self.share_branch:
            # The same module under both names: one set of parameters (parameters()
            # de-duplicates; the state dict lists the shared tensors under both names).
            self.branch_r = branch
        elif fresh_branch_r:
            self.branch_r = backbone.fresh_copy(branch)
        else:
            import copy

            self.branch_r = copy.deepcopy(branch)

    @property
    def feature_dim(self) -> int:
        """Width of the concatenated feature the shared classifier reads (2 * out_dim)."""
        return 2 * self.out_dim

    def features_c(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch_c(self.trunk(x))

    def features_r(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch_r(self.trunk(x))

    def forward_both(self, x_u: torch.Tensor, x_r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h_c(x_u), h_r(x_r))``; one trunk pass on ``cat(x_u, x_r)`` when the image
        shapes match and ``joint_trunk`` (see the module docstring), else two passes."""
        if self.joint_trunk and x_u.shape[1:] == x_r.shape[1:]:
            t = self.trunk(torch.cat([x_u, x_r], dim=0))
            t_u, t_r = t.split([x_u.shape[0], x_r.shape[0]], dim=0)
            return self.branch_c(t_u), self.branch_r(t_r)
        return self.features_c(x_u), self.features_r(x_r)

    def both_on(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h_c(x), h_r(x))`` of the same images; the trunk runs once."""
        t = self.trunk(x)
        return self.branch_c(t), self.branch_r(t)

    def inference_features(self, x: torch.Tensor, alpha: float | torch.Tensor = 0.5) -> torch.Tensor:
        """``[alpha h_c(x) ; (1 - alpha) h_r(x)]``, shape (B, 2 * out_dim); BBN's test-time mix
        is alpha = 0.5. The trunk runs once."""
        h_c, h_r = self.both_on(x)
        return torch.cat([alpha * h_c, (1 - alpha) * h_r], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inference_features(x)
