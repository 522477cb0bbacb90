"""DG-Net's per-iteration schedules, as functions of the global iteration.

The official trainer raises the code-reconstruction, cycle and teacher weights by
``warm_scale`` (5e-4) every iteration after ``warm_iter`` (30k) up to their caps,
and steps ``MultiStepLR`` (x0.1 at 60k and 90k) every iteration. It keeps the
warm-up weights in a mutable config dict that is not checkpointed, so a resumed
run restarts them at 0. Computing both from the iteration instead makes a
resumed run continue with exactly the weights and learning rates it had.
"""

WARMUP_START = 30000  # warm_iter / warm_teacher_iter of configs/latest.yaml
WARMUP_STEP = 5e-4  # warm_scale
LR_MILESTONES = (60000, 90000)  # step_size of the official MultiStepLR, per iteration
LR_GAMMA = 0.1


def warmup_weight(iteration, maximum, start=WARMUP_START, step=WARMUP_STEP):
    """0 until ``start`` iterations are done, then ``step`` more per iteration, capped at ``maximum``."""
    return min(maximum, max(0, iteration - start) * step)


def lr_factor(iteration, milestones=LR_MILESTONES, gamma=LR_GAMMA):
    """The multiplier of the base learning rate after ``iteration`` scheduler steps."""
    return gamma ** sum(iteration >= m for m in milestones)
