"""DG-Net's warm-up weights and learning-rate steps at chosen iterations."""
import pytest

from projects.dgnet.schedules import lr_factor, warmup_weight


@pytest.mark.parametrize('iteration, code_w, cycle_w', [
    (0, 0.0, 0.0), (30000, 0.0, 0.0), (30001, 5e-4, 5e-4), (31000, 0.5, 0.5),
    (32000, 1.0, 1.0), (33000, 1.0, 1.5), (34000, 1.0, 2.0), (100000, 1.0, 2.0)])
def test_warmup_weights_follow_the_official_increments_and_caps(iteration, code_w, cycle_w):
    assert warmup_weight(iteration, maximum=1.0) == pytest.approx(code_w)  # recon_s_w, recon_f_w
    assert warmup_weight(iteration, maximum=2.0) == pytest.approx(cycle_w)  # cycle, teacher


def test_a_resumed_run_has_the_weight_the_uninterrupted_one_had():
    """Stepping the official way (mutable, +5e-4 per iteration) and reading the function agree,
    also for a run 'resumed' at iteration 31234, where the official code restarts at 0."""
    weight, official = 0.0, {}
    for iteration in range(1, 34500):
        if iteration > 30000:
            weight = min(weight + 5e-4, 2.0)
        official[iteration] = weight
    for iteration in (30500, 31234, 33999, 34499):
        assert warmup_weight(iteration, maximum=2.0) == pytest.approx(official[iteration])


@pytest.mark.parametrize('iteration, factor', [(0, 1.0), (59999, 1.0), (60000, 0.1),
                                               (89999, 0.1), (90000, 0.01), (100000, 0.01)])
def test_learning_rate_drops_tenfold_at_60k_and_90k(iteration, factor):
    assert lr_factor(iteration) == pytest.approx(factor)
