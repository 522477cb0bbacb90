"""DG-Net's loss weights as functions of the global iteration.

The official trainer raises the code-reconstruction, cycle and teacher weights by
``warm_scale`` (5e-4) every iteration after ``warm_iter`` (30k) up to their caps.
It keeps them in a mutable config dict that is not checkpointed, so a resumed run
restarts them at 0. Computing them from the iteration (which the checkpoint holds)
makes a resumed run continue with exactly the weights it had. The learning rates
follow the host's ``train.lr_scheduler``, stepped per iteration by the engine.
"""


def warmup_weight(iteration, maximum, start, step):
    """0 until ``start`` iterations are done, then ``step`` more per iteration, capped at ``maximum``.

    ``iteration`` is the official 0-based counter: the trainer adds ``step`` when
    ``iteration > start``, before that iteration's loss.
    """
    return min(maximum, max(0, iteration - start) * step)


def _term_weight(iteration, maximum, start, step):
    """Weight of a warming-up term at ``iteration``. The official trainer decides whether to
    compute the term with the weight before this iteration's increment and weighs it with
    the one after, so a term starts one iteration after its weight leaves 0."""
    if warmup_weight(iteration - 1, maximum, start, step) <= 0:
        return 0.0
    return warmup_weight(iteration, maximum, start, step)


def loss_weights(dgnet, iteration, teacher_weight=1.0):
    """Every weight of DG-Net's generator/encoder step at ``iteration``.

    ``dgnet`` is the config node (see :mod:`.config`); ``teacher_weight`` the KL
    weight inside ``teacher_w`` (official ``T_w``, our ``teacher.weight``). Without a
    teacher (``dgnet.use_teacher`` False) neither the KL nor the fine-grained mining
    runs, as in the official code with ``teacher: ''``. ``id_fine`` is the official
    ``weight_B = teacher_w * B_w`` (before this iteration's increment) that scales the
    fine-grained head's identity loss on the real images inside the ``id`` term: it is
    0 before the warm-up, but the head stays in the graph (so weight decay still acts).
    """
    code = (iteration, dgnet.max_w, dgnet.warm_iter, dgnet.warm_scale)
    teacher = (iteration, dgnet.max_teacher_w, dgnet.warm_teacher_iter, dgnet.warm_scale)
    teacher_w = _term_weight(*teacher) if dgnet.use_teacher else 0.0
    return {
        'recon_x': dgnet.recon_x_w,
        'recon_xp': dgnet.recon_xp_w,
        'recon_s': _term_weight(*code),
        'recon_f': _term_weight(*code),
        'recon_cyc': _term_weight(iteration, dgnet.max_cyc_w, dgnet.warm_iter, dgnet.warm_scale),
        'id': dgnet.id_w,
        'id_fine': warmup_weight(iteration - 1, *teacher[1:]) * dgnet.fine_w,
        'pid': dgnet.pid_w,
        'recon_id': dgnet.recon_id_w,
        'teacher': teacher_w * teacher_weight,
        'fine': teacher_w * dgnet.fine_w,
    }
