"""API-Net pair construction: vectorised mining against the per-image loop oracle."""
import pytest
import torch

from projects.apinet.losses import (Pairs, mine_pairs, pairwise_sq_distances, reference_pairs_loop,
                                    reference_select_loop, select_pairs)


def assert_same(ours, oracle):
    for name, a, b in zip(Pairs._fields, ours, oracle):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def brute_force(dist, pids):
    """Expected (partner, valid) per pair, from first principles: first index of the row minimum."""
    n = len(pids)
    out = []
    for want_same in (True, False):
        for i in range(n):
            cands = [j for j in range(n) if j != i and (pids[j] == pids[i]) == want_same]
            if not cands:
                out.append((i, False))
                continue
            best = min(dist[i][j] for j in cands)
            out.append((next(j for j in cands if dist[i][j] == best), True))
    return out


def check_semantics(pairs, pids, dist):
    expected = brute_force(dist.tolist(), pids.tolist())
    assert pairs.partner.tolist() == [p for p, _ in expected]
    assert pairs.valid.tolist() == [v for _, v in expected]
    n = len(pids)
    assert pairs.anchor.tolist() == list(range(n)) * 2
    intra, inter = slice(0, n), slice(n, 2 * n)
    ok = pairs.valid
    same = pids[pairs.anchor] == pids[pairs.partner]
    assert same[intra][ok[intra]].all() and not same[inter][ok[inter]].any()
    assert (pairs.partner[intra][ok[intra]] != pairs.anchor[intra][ok[intra]]).all()


@pytest.mark.parametrize('seed', range(4))
@pytest.mark.parametrize('p, k, dim', [(4, 4, 8), (8, 2, 16), (3, 5, 2048), (16, 4, 64)])
def test_pk_batches_match_the_oracle(seed, p, k, dim):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(p * k, dim, generator=g)
    pids = torch.arange(p).repeat_interleave(k)
    if seed % 2:
        pids = pids[torch.randperm(p * k, generator=g)]  # identities not contiguous
    ours = mine_pairs(features, pids)
    assert_same(ours, reference_pairs_loop(features, pids))
    check_semantics(ours, pids, pairwise_sq_distances(features))
    assert ours.valid.all()


@pytest.mark.parametrize('seed', range(4))
def test_exact_ties_go_to_the_lowest_index(seed):
    g = torch.Generator().manual_seed(seed)
    # small integer features: every distance is exact, so ties are exact and frequent
    features = torch.randint(-1, 2, (24, 3), generator=g).float()
    pids = torch.randint(0, 5, (24,), generator=g)
    dist = pairwise_sq_distances(features)
    ours = mine_pairs(features, pids)
    assert_same(ours, reference_pairs_loop(features, pids))
    check_semantics(ours, pids, dist)
    # duplicated images (PKSampler repeats an identity's only image): exact zero-distance ties
    features = torch.randn(8, 32, generator=g)
    features[[2, 5, 6]] = features[1].clone()
    pids = torch.tensor([0, 0, 1, 0, 1, 1, 1, 0])
    ours = mine_pairs(features, pids)
    assert_same(ours, reference_pairs_loop(features, pids))
    check_semantics(ours, pids, pairwise_sq_distances(features))
    assert ours.partner[2].item() in (5, 6) and ours.partner[5].item() in (2, 6)  # the copies


def test_hand_made_distances_with_ties():
    dist = torch.tensor([[0., 3., 1., 1., 1.],
                         [3., 0., 4., 2., 2.],
                         [1., 1., 0., 5., 5.],
                         [1., 2., 5., 0., 1.],
                         [2., 2., 5., 1., 0.]])
    pids = torch.tensor([7, 7, 7, 9, 9])
    pairs = select_pairs(dist, pids)
    assert pairs.partner.tolist() == [2, 0, 0, 4, 3,   # intra; row 2 ties 0 and 1 -> 0
                                      3, 3, 3, 0, 0]   # inter; rows 0, 1, 2, 4 tie -> lowest
    assert pairs.valid.all()
    assert_same(pairs, reference_select_loop(dist, pids))


def test_identity_with_a_single_image_gets_an_invalid_intra_pair():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(7, 16, generator=g)
    pids = torch.tensor([3, 3, 5, 8, 8, 8, 1])  # identities 5 and 1 have one image each
    ours = mine_pairs(features, pids)
    assert_same(ours, reference_pairs_loop(features, pids))
    assert ours.valid.tolist() == [True, True, False, True, True, True, False] + [True] * 7
    assert ours.partner[2].item() == 2 and ours.partner[6].item() == 6  # not image 0
    # a batch of one identity has no inter pairs at all, a batch of one image no pair at all
    one_id = mine_pairs(features[3:6], pids[3:6])
    assert one_id.valid.tolist() == [True] * 3 + [False] * 3
    assert_same(one_id, reference_pairs_loop(features[3:6], pids[3:6]))
    single = mine_pairs(features[:1], pids[:1])
    assert single.valid.tolist() == [False, False] and single.partner.tolist() == [0, 0]


def test_random_layouts_with_singletons_match_the_oracle():
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(2, 40, (1,), generator=g))
        pids = torch.randint(0, max(2, n // 2), (n,), generator=g)
        features = torch.randn(n, 12, generator=g)
        assert_same(mine_pairs(features, pids), reference_pairs_loop(features, pids))


def test_mining_is_detached_and_stays_on_the_device():
    features = torch.randn(8, 4, requires_grad=True)
    pids = torch.arange(4).repeat_interleave(2)
    assert not pairwise_sq_distances(features).requires_grad
    assert not any(t.requires_grad for t in mine_pairs(features, pids))
    # 'meta' tensors have no data: any host round trip (.item(), .tolist(), numpy) would fail
    meta = mine_pairs(torch.empty(8, 4, device='meta'),
                      torch.empty(8, dtype=torch.long, device='meta'))
    assert all(t.device.type == 'meta' and t.shape == (16,) for t in meta)
    with pytest.raises(Exception):
        reference_pairs_loop(torch.empty(8, 4, device='meta'),
                             torch.empty(8, dtype=torch.long, device='meta'))


def test_bad_shapes_are_reported():
    with pytest.raises(ValueError, match='mine_pairs needs'):
        mine_pairs(torch.randn(4, 3), torch.arange(5))


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_mining_under_autocast_picks_the_fp32_pairs(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(32, 2048, generator=g).repeat_interleave(4, 0)
    features = (base + 0.3 * torch.rand(128, 2048, generator=g)) * 0.6  # norms near 18, close pairs
    pids = torch.arange(128) // 4
    expected = mine_pairs(features, pids)
    with torch.autocast('cpu', dtype=dtype):
        pairs = mine_pairs(features, pids)
    assert all(torch.equal(a, b) for a, b in zip(pairs, expected))
