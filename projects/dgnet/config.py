"""Config node ``dgnet``: loss weights, warm-ups and the generator/discriminator optimisers.

Defaults are the official ``configs/latest.yaml`` (names in brackets). The appearance
encoder E_a is the run's ``model`` and takes the host's ``train`` keys (SGD, staged LR);
its schedule, like every DG-Net schedule, is stepped once per iteration.
"""
from yacs.config import CfgNode as CN


def add_dgnet_config(cfg):
    cfg.dgnet = CN()
    cfg.dgnet.recon_x_w = 5.0  # L1 self-reconstruction G(s_a, f_a) vs x_a [recon_x_w]
    cfg.dgnet.recon_xp_w = 5.0  # L1 same-identity reconstruction G(s_a, f(xp_a)) vs x_a [recon_xp_w]
    cfg.dgnet.id_w = 1.0  # identity loss of E_a on the (randomly erased) real images [id_w]
    cfg.dgnet.pid_w = 1.0  # identity loss of E_a on the positives [pid_w]
    cfg.dgnet.recon_id_w = 0.5  # identity of generated images by a frozen E_a; trains E_s and G [recon_id_w]
    cfg.dgnet.gan_w = 1.0  # LSGAN weight, generator and discriminator side [gan_w]
    cfg.dgnet.r1_w = 0.01  # R1 gradient penalty of D on real images [dis.LAMBDA]
    cfg.dgnet.fine_w = 0.2  # fine-grained feature mining (identity of the structure), inside teacher_w [B_w]
    cfg.dgnet.warm_iter = 30000  # iterations before code and cycle reconstruction start warming up [warm_iter]
    cfg.dgnet.warm_teacher_iter = 30000  # iterations before teacher_w starts warming up [warm_teacher_iter]
    cfg.dgnet.warm_scale = 0.0005  # warm-up increment per iteration [warm_scale]
    cfg.dgnet.max_w = 1.0  # cap of the structure and appearance code reconstruction weights [max_w]
    cfg.dgnet.max_cyc_w = 2.0  # cap of the cycle reconstruction weight [max_cyc_w]
    cfg.dgnet.max_teacher_w = 2.0  # cap of teacher_w [max_teacher_w]
    cfg.dgnet.use_teacher = True  # primary feature learning and fine-grained mining from teacher.weights (KL weight: teacher.weight [T_w]); False: the official teacher ''

    cfg.dgnet.erasing_p = 0.5  # random erasing (fill 0) of the reals seen by the identity losses [erasing_p]
    cfg.dgnet.use_encoder_again = 0.5  # probability of training E_s on detached fakes (else a frozen E_s) [use_encoder_again]
    cfg.dgnet.lr_g = 0.0001  # Adam learning rate of E_s + MLPs + G [lr_g]
    cfg.dgnet.lr_d = 0.0001  # Adam learning rate of D [lr_d]
    cfg.dgnet.beta1 = 0.0  # Adam beta1 of G and D [beta1]
    cfg.dgnet.beta2 = 0.999  # Adam beta2 of G and D [beta2]
