"""Chunked k-reciprocal re-ranking against the host's ``re_ranking`` (the independent reference)."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchreid.reid.utils import re_ranking as host_re_ranking

from plugins.evaluation import protocol as evaluation
from plugins.evaluation import rerank


def host(query, gallery, metric='euclidean', k1=20, k2=6, lambda_value=0.3):
    def d(a, b):
        return rerank.HOST_DISTANCE(a, b, metric).numpy()
    return host_re_ranking(d(query, gallery), d(query, query), d(gallery, gallery), k1, k2,
                           lambda_value)


@pytest.mark.parametrize('num_query,num_gallery,dim,metric,k1,k2,lambda_value', [
    (30, 80, 16, 'euclidean', 20, 6, 0.3),  # the paper's parameters
    (7, 40, 8, 'cosine', 5, 3, 0.5),
    (50, 200, 32, 'euclidean', 20, 1, 0.3),  # no local query expansion
    (10, 12, 4, 'euclidean', 20, 6, 0.3),  # fewer images than k1 + 1
    (20, 60, 16, 'euclidean', 7, 8, 0.0),  # odd k1 (its half rounds to even), k2 = k1 + 1
])
@pytest.mark.parametrize('chunk_rows', [None, 3])
def test_re_ranking_equals_the_host(num_query, num_gallery, dim, metric, k1, k2, lambda_value,
                                    chunk_rows):
    generator = torch.Generator().manual_seed(num_query)
    query = torch.randn(num_query, dim, generator=generator)
    gallery = torch.randn(num_gallery, dim, generator=generator)
    ours = rerank.re_ranking(query, gallery, metric, k1, k2, lambda_value, chunk_rows=chunk_rows)
    expected = host(query, gallery, metric, k1, k2, lambda_value)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-5)


def test_re_ranking_equals_the_host_on_real_images(market_subset):
    """Features: 16x8 colour thumbnails of the Market-1501 subset's query and gallery images."""
    from torchreid.reid.data.datasets.image.market1501 import Market1501
    dataset = Market1501(root=market_subset)

    def features(items):
        return torch.stack([torch.from_numpy(np.asarray(
            Image.open(path).convert('RGB').resize((8, 16)), dtype=np.float32).ravel() / 255)
            for path, *_ in items])
    query, gallery = features(dataset.query), features(dataset.gallery)
    ours = rerank.re_ranking(query, gallery, chunk_rows=64)
    np.testing.assert_allclose(ours.numpy(), host(query, gallery), rtol=0, atol=1e-5)


def test_re_ranking_that_would_not_fit_names_the_chunk_key(monkeypatch):
    monkeypatch.setattr(rerank, '_available_bytes', lambda device: 10 ** 6)
    with pytest.raises(MemoryError, match='lower test.rerank_chunk'):
        rerank.re_ranking(torch.randn(5, 4), torch.randn(20, 4))


@pytest.mark.parametrize('key,value,accepted', [
    ('dist_metric', 'manhattan', "'euclidean' or 'cosine'"),
    ('rerank_k2', 22, 'test.rerank_k1 + 1'),
    ('rerank_lambda', 1.5, 'from 0 to 1'),
    ('aqe_k', 0, 'integer >= 1'),
    ('ranks', [0, 5], 'ranks from 1 to 50'),
    ('rerank_chunk', -1, '>= 0'),
])
def test_a_bad_test_option_names_the_key_and_what_it_accepts(key, value, accepted):
    with pytest.raises(ValueError) as error:
        evaluation.check_options(**{key: value})
    assert 'test.' + key in str(error.value) and accepted in str(error.value)
