"""FID / sFID / KID / precision-recall maths, the checked matrix square root, and ADM .npz files."""
import numpy as np
import pytest
import torch

from fae.errors import DataError
from fae.evaluation import fid as fid_mod
from fae.evaluation.fid import (fid_from_features, frechet_distance, kernel_inception_distance,
                                precision_recall, trace_sqrt_product)
from fae.evaluation.stats import (InceptionStats, NpzImages, StreamingStats, has_stats, read_sample_batch,
                                  read_stats, write_sample_batch)
from fae.evaluation.suite import format_table, generation_metrics


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_frechet_distance_matches_closed_form_for_non_commuting_2x2():
    # For 2x2 M with non-negative eigenvalues, tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)).
    mu1, mu2 = np.array([1.0, -2.0]), np.array([0.5, 1.0])
    s1 = np.array([[2.0, 0.3], [0.3, 1.0]])
    s2 = np.array([[1.0, -0.4], [-0.4, 3.0]])
    m = s1 @ s2
    tr_sqrt = np.sqrt(np.trace(m) + 2 * np.sqrt(np.linalg.det(m)))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_commuting_covariances():
    # Same eigenvectors: FID = |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    q = _rotation(6, 0)
    a, b = np.array([1, 2, 3, 4, 5, 6.0]), np.array([6, 1, 0.5, 2, 9, 1.0])
    mu1, mu2 = np.zeros(6), np.arange(6.0)
    expected = np.sum(mu2 ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    assert value == pytest.approx(expected, rel=1e-9)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift():
    x = np.random.default_rng(0).normal(size=(500, 16))
    assert fid_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    assert fid_from_features(x, x + 1.0) == pytest.approx(16.0, rel=1e-8)  # |dmu|^2 only


def test_low_rank_fid_route_matches_full_computation():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 50)), rng.normal(size=(30, 50)) * 2 + 1  # N < D: rank-deficient covariances
    full = frechet_distance(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert fid_from_features(x, y) == pytest.approx(full, rel=1e-7)


def test_ill_conditioned_case_is_exact_and_a_failing_sqrtm_falls_back(monkeypatch):
    # Rank-2 covariances in 4-D with a 1e12 spread of scales: older scipy's Schur sqrtm returned NaNs
    # here (1.17 does not). The exact answer: tr (X X^T Y Y^T)^(1/2) = nuclear norm of X^T Y.
    rng = np.random.default_rng(69)
    x = rng.normal(size=(4, 2)) * np.array([1e6, 1e-6])
    y = rng.normal(size=(4, 2)) * np.array([1e-6, 1e6])
    expected = np.linalg.svd(x.T @ y, compute_uv=False).sum()
    value, _ = trace_sqrt_product(x @ x.T, y @ y.T)  # whichever route the checks accept
    assert value == pytest.approx(expected, rel=1e-6)
    from scipy import linalg
    monkeypatch.setattr(linalg, "sqrtm", lambda a, *args, **kw: np.full_like(a, np.nan))
    with pytest.warns(RuntimeWarning, match="fallback"):
        value, method = trace_sqrt_product(x @ x.T, y @ y.T)
    assert method == "eigh"
    assert value == pytest.approx(expected, rel=1e-6)


def test_sqrtm_corruption_is_detected(monkeypatch):
    # Simulate a BLAS build on which scipy.linalg.sqrtm silently returns a wrong (finite, real) root.
    from scipy import linalg
    real_sqrtm = linalg.sqrtm
    monkeypatch.setattr(linalg, "sqrtm", lambda a, *args, **kw: real_sqrtm(a) * 1.01)
    q = _rotation(5, 1)
    a, b = np.array([1, 2, 3, 4, 5.0]), np.array([5, 4, 3, 2, 1.0])
    with pytest.warns(RuntimeWarning):
        value, method = trace_sqrt_product((q * a) @ q.T, (q * b) @ q.T)
    assert method == "eigh"
    assert value == pytest.approx(np.sqrt(a * b).sum(), rel=1e-9)
    monkeypatch.setattr(linalg, "sqrtm", real_sqrtm)
    assert trace_sqrt_product((q * a) @ q.T, (q * b) @ q.T)[1] == "sqrtm"


def test_precision_recall_identical_and_disjoint_clouds():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 8))
    assert precision_recall(real, real.copy()) == (1.0, 1.0)
    far = rng.normal(size=(300, 8)) + 100.0
    assert precision_recall(real, far) == (0.0, 0.0)


def test_precision_recall_partial_overlap():
    # Fakes cover only half of the real modes: precision stays high, recall drops to about half.
    rng = np.random.default_rng(1)
    centers = np.eye(4) * 20
    real = np.concatenate([c + rng.normal(size=(200, 4)) for c in centers])
    fake = np.concatenate([c + rng.normal(size=(400, 4)) for c in centers[:2]])
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.9
    assert 0.4 < recall < 0.55


def test_kid_near_zero_for_same_distribution_and_positive_for_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 32)), rng.normal(size=(400, 32))
    same, _ = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.01
    assert shifted > 0.2


def test_streamed_statistics_equal_one_shot():
    x = np.random.default_rng(0).normal(size=(257, 12)) * 3 + 5
    stream = StreamingStats(12)
    for start in range(0, 257, 50):
        stream.update(torch.from_numpy(x[start:start + 50]))
    np.testing.assert_allclose(stream.mean(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stream.cov(), np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
    halves = StreamingStats(12), StreamingStats(12)
    halves[0].update(x[:100])
    halves[1].update(x[100:])
    halves[0].merge(halves[1])
    np.testing.assert_allclose(halves[0].cov(), stream.cov(), rtol=1e-12)
    with pytest.raises(DataError, match="empty"):
        StreamingStats(3).mean()


def test_adm_batch_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 9, 11, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7)
    path = write_sample_batch(tmp_path / "samples.npz", images, labels)
    got, got_labels = read_sample_batch(path)
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    assert np.array_equal(got_labels, labels)
    reader = NpzImages(path)  # streamed reader: NCHW slices of the same bytes
    assert torch.equal(reader.batch(2, 6), torch.from_numpy(images[2:6]).permute(0, 3, 1, 2))
    assert not has_stats(path)
    np.savez(tmp_path / "labels_key.npz", arr_0=images, labels=labels)  # the other label convention
    assert np.array_equal(read_sample_batch(tmp_path / "labels_key.npz")[1], labels)
    with pytest.raises(DataError, match="uint8"):
        write_sample_batch(tmp_path / "bad.npz", images.astype(np.float32))


def test_reads_adm_reference_batch_with_precomputed_stats(tmp_path):
    # Layout of VIRTUAL_imagenet256_labeled.npz: arr_0 plus mu/sigma (pool) and mu_s/sigma_s (spatial).
    rng = np.random.default_rng(0)
    ref = dict(arr_0=rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8), mu=rng.normal(size=2048),
               sigma=np.eye(2048), mu_s=rng.normal(size=2023), sigma_s=np.eye(2023))
    np.savez(tmp_path / "VIRTUAL_ref.npz", **ref)
    stats = read_stats(tmp_path / "VIRTUAL_ref.npz")
    assert np.array_equal(stats.mu, ref["mu"]) and np.array_equal(stats.sigma_s, ref["sigma_s"])
    assert stats.pool_features is None
    # our own statistics file round-trips, features included
    mine = InceptionStats(mu=stats.mu, sigma=stats.sigma, mu_s=stats.mu_s, sigma_s=stats.sigma_s, count=3,
                          pool_features=rng.normal(size=(3, 2048)).astype(np.float32))
    back = read_stats(mine.save(tmp_path / "mine.npz"))
    assert back.count == 3 and np.array_equal(back.pool_features, mine.pool_features)
    with pytest.raises(DataError, match="mu"):
        read_stats(write_sample_batch(tmp_path / "images_only.npz", ref["arr_0"]))


def test_generation_metrics_reports_what_inputs_allow():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(60, 32)).astype(np.float32)
    full = InceptionStats(mu=feats.mean(0), sigma=np.cov(feats, rowvar=False), count=60, pool_features=feats)
    stats_only = InceptionStats(mu=full.mu, sigma=full.sigma, count=60)
    res = generation_metrics(full, full, kid_subsets=2, kid_subset_size=30, sqrt_method="eigh")
    assert res["fid"] == pytest.approx(0.0, abs=1e-6)
    assert res["precision"] == 1.0 and res["recall"] == 1.0
    assert res["sfid"] is None and res["inception_score"] is None
    assert "no logits" in res["inception_score_note"]
    res = generation_metrics(full, stats_only, metrics=("fid", "kid"))
    assert res["kid"] is None and "precision" not in res
    assert "n/a" in format_table(res)
    assert fid_mod.PR_NEAREST_K == 3
