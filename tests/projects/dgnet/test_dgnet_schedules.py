"""DG-Net's warm-up weights at chosen iterations, as the official trainer steps them."""
import pytest

from plugins.config import get_default_config
from projects.dgnet.schedules import loss_weights, warmup_weight

START, STEP = 30000, 5e-4  # configs/latest.yaml: warm_iter, warm_teacher_iter, warm_scale


@pytest.mark.parametrize('iteration, code_w, cycle_w', [
    (0, 0.0, 0.0), (30000, 0.0, 0.0), (30001, 5e-4, 5e-4), (31000, 0.5, 0.5),
    (32000, 1.0, 1.0), (33000, 1.0, 1.5), (34000, 1.0, 2.0), (100000, 1.0, 2.0)])
def test_warmup_weights_follow_the_official_increments_and_caps(iteration, code_w, cycle_w):
    assert warmup_weight(iteration, 1.0, START, STEP) == pytest.approx(code_w)  # recon_s_w, recon_f_w
    assert warmup_weight(iteration, 2.0, START, STEP) == pytest.approx(cycle_w)  # cycle, teacher


def test_a_resumed_run_has_the_weight_the_uninterrupted_one_had():
    """Stepping the official way (mutable, +5e-4 per iteration) and reading the function agree,
    also for a run 'resumed' at iteration 31234, where the official code restarts at 0."""
    weight, official = 0.0, {}
    for iteration in range(1, 34500):
        if iteration > 30000:
            weight = min(weight + 5e-4, 2.0)
        official[iteration] = weight
    for iteration in (30500, 31234, 33999, 34499):
        assert warmup_weight(iteration, 2.0, START, STEP) == pytest.approx(official[iteration])


@pytest.mark.parametrize('iteration, expected', [
    (0, {'recon_x': 5, 'recon_xp': 5, 'id': 1, 'pid': 1, 'recon_id': 0.5, 'recon_s': 0, 'recon_f': 0,
         'recon_cyc': 0, 'teacher': 0, 'fine': 0, 'id_fine': 0}),
    (30001, {'recon_s': 0, 'recon_cyc': 0, 'teacher': 0, 'fine': 0, 'id_fine': 0}),
    (30002, {'recon_s': 1e-3, 'recon_cyc': 1e-3, 'teacher': 1e-3, 'fine': 2e-4, 'id_fine': 1e-4}),
    (31000, {'recon_s': 0.5, 'recon_f': 0.5, 'recon_cyc': 0.5, 'teacher': 0.5, 'fine': 0.1,
             'id_fine': 0.0999}),
    (40000, {'recon_s': 1, 'recon_f': 1, 'recon_cyc': 2, 'teacher': 2, 'fine': 0.4, 'id_fine': 0.4}),
])
def test_every_weight_of_the_official_recipe(iteration, expected):
    """latest.yaml: fine-grained terms weigh teacher_w * B_w (0.2); the KL teacher_w * T_w (1).
    The official trainer computes a warming-up term only once its weight before the
    iteration's increment is positive, and weighs it with the weight after; the real
    images' fine-grained term (weight_B) reads the weight before the increment."""
    weights = loss_weights(get_default_config().dgnet, iteration)
    assert {k: weights[k] for k in expected} == pytest.approx(expected)


def test_without_a_teacher_only_the_real_images_fine_grained_term_warms_up():
    cfg = get_default_config().dgnet
    cfg.use_teacher = False
    weights = loss_weights(cfg, 40000)
    assert weights['teacher'] == weights['fine'] == 0
    assert weights['id_fine'] == pytest.approx(0.4)
