"""Pure loss modules: LA / Balanced Softmax cross-entropy, LDAM and DRW weights, dot
regression for a fixed ETF, BCL, MiSLAS's label-aware smoothing, GLMC's soft-target CE and
consistency, PaCo's parametric contrastive loss and key queue, weight balancing's max-norm
projection and class-balanced loss, and AllNC's HyCon, P2P and class-mean memory.

HyCon, P2P and the memory are this project's reconstruction of AllNC (Zhang et al. 2024);
the paper's exact equations are not available, and every free choice is an option.
"""
from .bcl import BalancedSupConLoss, class_averaged_contrast
from .ce import (
    balanced_softmax_ce,
    class_weight,
    class_weighted_ce,
    log_prior,
    logit_adjusted_ce,
)
from .etf import batch_class_weights, dot_regression_loss
from .glmc import simsiam_loss, soft_target_ce
from .hycon import HyConLoss
from .las import LabelAwareSmoothing, smoothing_factors
from .ldam import LDAMLoss, drw_weights, ldam_margins
from .maxnorm import cb_softmax_bce, maxnorm_project_, maxnorm_threshold, row_norms
from .memory import ClassMeanMemory, centred_mean, centred_normalized
from .p2p import P2PLoss, etf_cosines
from .paco import KeyQueue, paco_loss

__all__ = [
    "BalancedSupConLoss",
    "ClassMeanMemory",
    "HyConLoss",
    "KeyQueue",
    "LDAMLoss",
    "LabelAwareSmoothing",
    "P2PLoss",
    "balanced_softmax_ce",
    "batch_class_weights",
    "cb_softmax_bce",
    "centred_mean",
    "centred_normalized",
    "class_averaged_contrast",
    "class_weight",
    "class_weighted_ce",
    "dot_regression_loss",
    "drw_weights",
    "etf_cosines",
    "ldam_margins",
    "log_prior",
    "logit_adjusted_ce",
    "maxnorm_project_",
    "maxnorm_threshold",
    "paco_loss",
    "row_norms",
    "simsiam_loss",
    "smoothing_factors",
    "soft_target_ce",
]
