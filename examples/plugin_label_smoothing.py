"""A method of your own, kept outside the package: cross-entropy with label smoothing
(Szegedy et al. CVPR 2016), each one-hot target mixed with the uniform distribution.

Nothing in ``allnc`` is edited. The config names this file in ``plugins``
(``examples/label_smoothing.yaml`` does), and the file registers the method and its config
section when it is imported, before the config tree is built:

    allnc train --config examples/label_smoothing.yaml --out runs/ls
    allnc config examples/label_smoothing.yaml            # the tree now has method.label_smoothing
    allnc eval runs/ls                                    # the run's config.yaml names the plugin

A plugin can register anything the package keeps in a registry the same way: backbones
(``allnc.models.BACKBONES``), classifiers (``allnc.models.CLASSIFIERS``), data sources
(``allnc.data.sources.SOURCES``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from allnc.methods import METHODS
from allnc.methods.single import SingleBranch


@dataclass
class LabelSmoothingConfig:
    # the weight of the uniform distribution in each target; 0 = cross-entropy
    eps: float = 0.1


@METHODS.register("label_smoothing", section="label_smoothing", config=LabelSmoothingConfig)
class LabelSmoothing(SingleBranch):
    """Label-smoothed cross-entropy on a linear classifier (``model.classifier``)."""

    classifier_kind = ""

    def loss_fn(self, logits, y, feats):
        return F.cross_entropy(logits.float(), y, label_smoothing=float(self.cfg.method.label_smoothing.eps))
