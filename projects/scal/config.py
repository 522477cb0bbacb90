"""Config node ``scal``: the critic and its weight in the agents' loss (none of these is in the paper)."""
from yacs.config import CfgNode as CN


def add_scal_config(cfg):
    cfg.scal = CN()
    cfg.scal.value_weight = 0.1  # weight of J_cri = -V in the main loss (0 turns the critic's pull off)
    cfg.scal.critic_lr = 0.0001  # Adam learning rate of the critic (its own optimiser; 1e-3 overshoots at this fan-in)
    cfg.scal.critic_hidden = 256  # hidden width of the critic's MLP
    # what J_cri = -V trains: 'agents' (the paper's J_cri(theta): the attention agents only)
    # or 'network' (every parameter upstream of the critic's inputs: agents and trunk)
    cfg.scal.value_reach = 'agents'
    cfg.scal.critic_first = False  # fit the critic before the main backward (True) or after the step
