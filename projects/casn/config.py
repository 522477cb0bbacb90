"""Config node ``casn``: loss weights and attention parameters (paper eq. 7; values the paper omits are ours)."""
from yacs.config import CfgNode as CN


def add_casn_config(cfg):
    cfg.casn = CN()
    cfg.casn.weight_ia = 1.0  # identification attention loss L_ia
    cfg.casn.weight_ver = 1.0  # Siamese verification BCE L_ver
    cfg.casn.weight_sa = 0.1  # Siamese attention consistency L_sa
    cfg.casn.alpha = 10.0  # soft-mask sharpness: T(M) = sigmoid(alpha * (M - beta)) (GAIN's omega)
    cfg.casn.beta = 0.5  # soft-mask threshold on the min-max normalised Grad-CAM (GAIN's sigma)
    cfg.casn.sa_threshold = 0.5  # Siamese attention: cells kept and cropped to, on the normalised map
