"""Config node ``apinet``: the weights and options of API-Net's pair losses.

The image-level ReID terms of the ``apinet`` engine (batch-hard triplet on the
pooled feature, label-smoothed cross-entropy on the BNNeck logits) read the
host's keys exactly as the ``triplet`` engine does: ``loss.triplet.weight_t``,
``loss.triplet.weight_x``, ``loss.triplet.margin`` and
``loss.softmax.label_smooth``. A baseline config and an API-Net config thus
differ only in the model, the engine and this node. Set both triplet weights
to 0 for the paper's objective (pair cross-entropy + score ranking only).
"""
from yacs.config import CfgNode as CN


def add_apinet_config(cfg):
    cfg.apinet = CN()
    cfg.apinet.weight_pair_ce = 1.0  # cross-entropy over the four attentive logits of every pair
    cfg.apinet.weight_rank = 1.0  # score-ranking regularisation (paper eq. 7)
    cfg.apinet.rank_margin = 0.05  # p_self(true class) must beat p_other(true class) by this
    cfg.apinet.pair_label_smooth = False  # label smoothing (epsilon 0.1) in the pair CE; paper: off
