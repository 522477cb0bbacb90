import json
import os
import warnings

import numpy as np
import pytest
import torch

from plugins.evaluation import protocol as evaluation
from plugins.benchmarking.sections import load_pristine_host_rank
from plugins.evaluation.protocol import (
    average_query_expansion, eval_cuhk03, evaluate_rank, evaluate_rank_full, flip_averaged,
    patch_host_cuhk03_metric
)
from tests.helpers import load_tool

with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # torchreid warns that its Cython metric is missing
    import torchreid.reid.metrics
    from torchreid.reid.metrics import rank as live_rank


host_rank = load_pristine_host_rank()
assert host_rank.eval_cuhk03 is not eval_cuhk03
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def random_problem(seed, num_q=40, num_g=200, num_ids=12, num_cams=3, ties=False,
                   distractors=False, unmatched=False):
    rng = np.random.RandomState(seed)
    distmat = rng.rand(num_q, num_g)
    if ties:
        distmat = np.round(distmat, 1)  # ~10 distinct values per row
    q_pids = rng.randint(1, num_ids + 1, num_q)
    g_pids = rng.randint(1, num_ids + 1, num_g)
    if distractors:
        g_pids[rng.rand(num_g) < 0.3] = 0
        g_pids[rng.rand(num_g) < 0.1] = -1
    q_camids = rng.randint(0, num_cams, num_q)
    g_camids = rng.randint(0, num_cams, num_g)
    if unmatched:
        q_pids[:3] = num_ids + 100  # identity absent from the gallery
        # identity present only under the query's camera: all junk, no valid match
        q_pids[3], q_camids[3] = num_ids + 200, 0
        g_pids[:2], g_camids[:2] = num_ids + 200, 0
    return distmat, q_pids, g_pids, q_camids, g_camids


PROBLEMS = {
    'plain': dict(seed=0),
    'float32': dict(seed=1),
    'ties': dict(seed=2, ties=True),
    'ties_few_ids': dict(seed=3, ties=True, num_ids=3),
    'few_ids_one_cam_pair': dict(seed=4, num_ids=2, num_cams=2),
    'distractors': dict(seed=5, distractors=True),
    'unmatched_queries': dict(seed=6, unmatched=True, ties=True),
    'all_kinds': dict(seed=7, ties=True, distractors=True, unmatched=True, num_ids=5),
}


@pytest.fixture
def small_chunks(monkeypatch):
    """About 7 query rows per chunk, so chunk boundaries are exercised."""
    monkeypatch.setattr(evaluation, '_CHUNK_CELLS', 7 * 200)


@pytest.mark.parametrize('name', sorted(PROBLEMS))
def test_market_metric_equals_host(name, small_chunks):
    problem = random_problem(**PROBLEMS[name])
    if name == 'float32':
        problem = (problem[0].astype(np.float32),) + problem[1:]
    host_cmc, host_map = host_rank.eval_market1501(*problem, 50)
    cmc, mAP = evaluate_rank(*problem, max_rank=50, use_cython=False)
    assert cmc.dtype == host_cmc.dtype == np.float32
    assert cmc.shape == host_cmc.shape == (50,)
    np.testing.assert_allclose(cmc, host_cmc, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(host_map, abs=1e-6)
    assert 0 < mAP < 1


def test_evaluate_rank_full_matches_evaluate_rank(small_chunks):
    problem = random_problem(seed=8, ties=True, distractors=True)
    cmc, mAP = evaluate_rank(*problem, max_rank=20)
    full = evaluate_rank_full(*problem, max_rank=20)
    assert set(full) == {'cmc', 'mAP', 'mINP'}
    np.testing.assert_array_equal(full['cmc'], cmc)
    assert full['mAP'] == mAP
    assert 0 < full['mINP'] <= full['mAP']  # each INP is at most that query's AP


def test_max_rank_larger_than_gallery(capsys):
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(seed=9, num_q=15, num_g=20, num_ids=4)
    q_camids[:], g_camids[:] = 0, 1  # no junk: the host's per-query curves then stack
    host_cmc, host_map = host_rank.eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    capsys.readouterr()
    cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)
    assert 'number of gallery samples is quite small, got 20' in capsys.readouterr().out
    assert cmc.shape == host_cmc.shape == (20,)
    np.testing.assert_allclose(cmc, host_cmc, rtol=0, atol=1e-6)
    assert cmc[-1] == 1.0
    assert mAP == pytest.approx(host_map, abs=1e-6)


def test_curve_stops_at_kept_gallery_size_like_host():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(seed=13, num_q=10, num_g=20, num_ids=4)
    q_pids[:], q_camids[:] = 1, 0
    g_camids[g_pids == 1] = 1
    g_camids[:2], g_pids[:2] = 0, 1  # every query loses the same 2 junk entries
    host_cmc, host_map = host_rank.eval_market1501(distmat, q_pids, g_pids, q_camids, g_camids, 50)
    cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50)
    assert cmc.shape == host_cmc.shape == (18,)
    np.testing.assert_allclose(cmc, host_cmc, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(host_map, abs=1e-6)


def test_hand_computed_map_and_minp():
    # Gallery g0..g6 and two queries; "junk" = same pid and same camera as the query.
    g_pids = np.array([2, 1, 1, 3, 1, 2, 2])
    g_camids = np.array([1, 0, 1, 0, 2, 0, 2])
    q_pids, q_camids = np.array([1, 2]), np.array([0, 1])
    distmat = np.array([
        # q0 (pid 1, cam 0): order g2 g0 [g1 junk] g3 g4 g5 g6 -> kept hits at ranks 1, 4
        [0.10, 0.20, 0.05, 0.40, 0.50, 0.60, 0.70],
        # q1 (pid 2, cam 1): order g1 g6 g2 g3 g4 g5 [g0 junk] -> kept hits at ranks 2, 6
        [0.90, 0.10, 0.20, 0.30, 0.40, 0.50, 0.15],
    ])
    # AP:  q0 = (1/1 + 2/4) / 2 = 0.75      q1 = (1/2 + 2/6) / 2 = 5/12
    # INP: q0 = 2 hits / rank 4 = 0.5      q1 = 2 hits / rank 6 = 1/3
    # CMC: q0 found at rank 1, q1 at rank 2 -> [0.5, 1, 1, 1]
    full = evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=4)
    assert full['mAP'] == pytest.approx((0.75 + 5 / 12) / 2)
    assert full['mINP'] == pytest.approx((0.5 + 1 / 3) / 2)
    np.testing.assert_allclose(full['cmc'], [0.5, 1, 1, 1])


def test_query_without_valid_match_is_skipped():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(seed=10, ties=True)
    # Query 0's identity exists only as junk (same camera) in the gallery.
    q_pids[0], q_camids[0] = 999, 2
    g_pids[:3], g_camids[:3] = 999, 2
    full = evaluate_rank_full(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=30)
    rest = evaluate_rank_full(distmat[1:], q_pids[1:], g_pids, q_camids[1:], g_camids, max_rank=30)
    np.testing.assert_array_equal(full['cmc'], rest['cmc'])
    assert full['mAP'] == rest['mAP']
    assert full['mINP'] == rest['mINP']


def test_no_valid_query_is_an_error():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(seed=11, num_ids=5)
    q_pids[:] = 1000
    with pytest.raises(AssertionError, match='all query identities do not appear'):
        evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids)
    with pytest.raises(AssertionError):
        eval_cuhk03(distmat, q_pids, g_pids, q_camids, g_camids, 50)


def test_mismatched_lengths_are_rejected():
    distmat, q_pids, g_pids, q_camids, g_camids = random_problem(seed=12)
    with pytest.raises(ValueError, match='query pids'):
        evaluate_rank(distmat, q_pids[1:], g_pids, q_camids, g_camids)
    with pytest.raises(ValueError, match='gallery pids'):
        evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids[1:])


def host_cuhk03(monkeypatch, problem, max_rank, seed):
    """The host's own eval_cuhk03 (np.bool provided for numpy versions lacking it)."""
    monkeypatch.setattr(np, 'bool', np.bool_, raising=False)
    np.random.seed(seed)
    result = host_rank.eval_cuhk03(*problem, max_rank)
    return result, np.random.rand()


@pytest.mark.parametrize('seed, kwargs, max_rank', [
    (0, dict(num_ids=60), 20),  # mostly identities with 1-5 gallery images
    (1, dict(ties=True, num_ids=8), 5),  # few identities: curve shorter than max_rank
    (2, dict(distractors=True, unmatched=True, num_ids=30), 10),
    (3, dict(num_ids=200, num_g=150), 50),  # many singleton identities
])
def test_cuhk03_metric_equals_host(monkeypatch, seed, kwargs, max_rank):
    problem = random_problem(seed, **kwargs)
    (host_cmc, host_map), host_next = host_cuhk03(monkeypatch, problem, max_rank, seed)
    np.random.seed(seed)
    cmc, mAP = evaluate_rank(*problem, max_rank=max_rank, use_metric_cuhk03=True)
    ours_next = np.random.rand()
    assert cmc.dtype == host_cmc.dtype and cmc.shape == host_cmc.shape
    np.testing.assert_allclose(cmc, host_cmc, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(host_map, abs=1e-6)
    assert ours_next == host_next  # the global RNG was consumed identically


def test_cuhk03_metric_depends_on_the_seed():
    problem = random_problem(seed=4, num_ids=40)
    np.random.seed(0)
    cmc_a, _ = eval_cuhk03(*problem, 10)
    np.random.seed(1)
    cmc_b, _ = eval_cuhk03(*problem, 10)
    assert not np.array_equal(cmc_a, cmc_b)


def test_patch_host_cuhk03_metric(monkeypatch):
    # Start from the unpatched host (importing plugins may have patched it already).
    monkeypatch.setattr(live_rank, 'eval_cuhk03', host_rank.eval_cuhk03)
    monkeypatch.setattr(torchreid.reid.metrics, 'evaluate_rank', live_rank.evaluate_rank)
    patch_host_cuhk03_metric()
    patch_host_cuhk03_metric()
    assert live_rank.eval_cuhk03 is eval_cuhk03

    problem = random_problem(seed=5, num_ids=30, distractors=True)
    np.random.seed(3)
    host_cmc, host_map = torchreid.reid.metrics.evaluate_rank(
        *problem, max_rank=10, use_metric_cuhk03=True, use_cython=False
    )
    (ref_cmc, ref_map), _ = host_cuhk03(monkeypatch, problem, 10, seed=3)
    np.random.seed(3)
    cmc, mAP = evaluate_rank(*problem, max_rank=10, use_metric_cuhk03=True)
    np.testing.assert_array_equal(host_cmc, cmc)
    assert host_map == mAP
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)


def test_benchmark_evaluation_section(tmp_path):
    benchmark = load_tool('benchmark')

    benchmark.main(['--sections', 'evaluation', '--num-query', '60', '--num-gallery', '500',
                    '--out-dir', str(tmp_path)])
    with open(tmp_path / 'benchmark.json') as f:
        result = json.load(f)['sections']['evaluation']
    for key in ('host_s', 'ours_s', 'speedup', 'max_abs_diff'):
        assert isinstance(result[key], float), key
    assert result['speedup'] == pytest.approx(result['host_s'] / result['ours_s'])
    assert result['max_abs_diff'] <= 1e-6
    assert '| host (s) | ours (s) | speed-up |' in (tmp_path / 'benchmark.md').read_text()


@pytest.mark.parametrize('metric', ['euclidean', 'cosine'])
def test_distance_matrix_on_a_cpu_is_the_hosts(metric):
    from torchreid.reid.metrics.distance import compute_distance_matrix as host
    from plugins.evaluation.protocol import compute_distance_matrix
    torch.manual_seed(0)
    qf, gf = torch.randn(37, 16), torch.randn(101, 16)
    ours = compute_distance_matrix(qf, gf, metric, device='cpu', chunk_rows=5)
    assert torch.equal(ours, host(qf, gf, metric))  # on a CPU: the host's own path, exactly
    assert ours.device.type == 'cpu' and ours.shape == (37, 101)


def test_flip_averaged_is_the_mean_of_two_explicit_passes():
    images = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).view(2, 3, 2, 4)
    extract = lambda x: x[:, 0, 0, :2]  # noqa: E731  (the first two columns of the first row)
    assert torch.equal(flip_averaged(extract, images),
                       (images[:, 0, 0, :2] + images[:, 0, 0, [3, 2]]) / 2)


def test_average_query_expansion_on_a_hand_computed_case():
    """Three unit vectors in 2D, k 2, alpha 1: each becomes the normalised sum of itself and
    its most similar other, weighted by cosine similarity."""
    a, b, c = torch.tensor([1.0, 0.0]), torch.tensor([0.6, 0.8]), torch.tensor([0.0, 1.0])
    query, gallery = average_query_expansion(torch.stack([a * 3]), torch.stack([b, c * 2]), k=2,
                                             alpha=1.0)
    # a's nearest other is b (0.6); b's is c (0.8 > 0.6); c's is b (0.8)
    expected = torch.stack([a + 0.6 * b, b + 0.8 * c, c + 0.8 * b])
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(torch.cat([query, gallery]), expected, atol=1e-6)
    squared, _ = average_query_expansion(torch.stack([a]), torch.stack([b, c]), k=2, alpha=2.0)
    assert torch.allclose(squared[0], (a + 0.36 * b) / (a + 0.36 * b).norm(), atol=1e-6)
    with pytest.raises(ValueError, match='aqe_k'):
        average_query_expansion(query, gallery, k=0)


def test_each_evaluation_appends_a_json_line_matching_what_it_prints(tmp_path, capsys):
    from tests.helpers import REPO, tiny_synthreid_run
    config = os.path.join(REPO, 'configs', 'baselines', 'resnet50_synthreid.yaml')
    engine = tiny_synthreid_run(config, tmp_path, 'model.name', 'resnet18')
    plain = engine.test(save_dir=str(tmp_path))
    expanded = engine.test(save_dir=str(tmp_path), flip=True, aqe=True, aqe_k=3, rerank=True)
    lines = evaluation.read_metrics(str(tmp_path))
    assert [line['rank1'] for line in lines] == [plain, expanded]
    assert lines[1]['options'] == {
        'dist_metric': 'euclidean', 'normalize_feature': False, 'flip': True, 'aqe': True,
        'aqe_k': 3, 'aqe_alpha': 3.0, 'rerank': True, 'rerank_k1': 20, 'rerank_k2': 6,
        'rerank_lambda': 0.3, 'rerank_chunk': 0, 'cuhk03_metric': False}
    printed = capsys.readouterr().out
    for line in lines:
        assert line['kind'] == 'test' and line['dataset'] == 'synthreid'
        assert 'mAP: {:.1%}'.format(line['mAP']) in printed
        assert 'mINP: {:.1%}'.format(line['mINP']) in printed
        assert 'Rank-5  : {:.1%}'.format(line['rank5']) in printed


def test_a_training_run_logs_its_losses_and_every_evaluation(tmp_path, capsys):
    """Training lines at print_freq and one line per periodic and final evaluation, with
    re-ranking in both (the host re-ranks in test-only runs alone)."""
    from tests.helpers import REPO, tiny_synthreid_run
    config = os.path.join(REPO, 'configs', 'baselines', 'resnet50_synthreid.yaml')
    engine = tiny_synthreid_run(config, tmp_path, 'model.name', 'resnet18')
    save_dir = str(tmp_path / 'run')
    engine.run(save_dir=save_dir, max_epoch=2, eval_freq=1, print_freq=1, rerank=True)
    train, test = (evaluation.read_metrics(save_dir, kind) for kind in ('train', 'test'))
    assert [line['epoch'] for line in test] == [1, 2]
    assert all(line['options']['rerank'] for line in test)
    assert len(train) == 2 * engine.num_batches
    assert [line['iteration'] for line in train] == list(range(1, 2 * engine.num_batches + 1))
    printed = capsys.readouterr().out
    for line in train:
        assert 'loss_x {:.4f}'.format(line['loss_x']) in printed
