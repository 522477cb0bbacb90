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


def loss_weights(dgnet, iteration, teacher_weight=1.0):
    """Every weight of DG-Net's generator/encoder step at ``iteration``.

    ``dgnet`` is the config node (see :mod:`.config`); ``teacher_weight`` the KL
    weight inside ``teacher_w`` (official ``T_w``, our ``teacher.weight``). Without a
    teacher (``dgnet.use_teacher`` False) neither the KL nor the fine-grained mining
    runs, as in the official code with ``teacher: ''``. The
    fine-grained terms (identity of the real images' fine-grained head, and of the
    structure source of the generated images) are scaled by ``teacher_w * B_w``,
    as in the official ``weight_B``: before the warm-up they get no gradient.
    """
    code = warmup_weight(iteration, dgnet.max_w, dgnet.warm_iter, dgnet.warm_scale)
    teacher = warmup_weight(iteration, dgnet.max_teacher_w, dgnet.warm_teacher_iter, dgnet.warm_scale)
    return {
        'recon_x': dgnet.recon_x_w,
        'recon_xp': dgnet.recon_xp_w,
        'recon_s': code,
        'recon_f': code,
        'recon_cyc': warmup_weight(iteration, dgnet.max_cyc_w, dgnet.warm_iter, dgnet.warm_scale),
        'id': dgnet.id_w,
        'id_fine': dgnet.id_w * teacher * dgnet.fine_w,
        'pid': dgnet.pid_w,
        'recon_id': dgnet.recon_id_w,
        'teacher': teacher * teacher_weight if dgnet.use_teacher else 0.0,
        'fine': teacher * dgnet.fine_w if dgnet.use_teacher else 0.0,
    }
