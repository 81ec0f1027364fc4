"""The per-pixel softmax cross-entropy: against a per-pixel loop, numerical gradients, the ignore label."""
import numpy as np
import pytest

from minifcn.backend import to_numpy
from minifcn.gradcheck import gradcheck
from minifcn.ops import softmax_cross_entropy


def loss_naive(scores, labels, ignore=255, reduction="sum"):
    """One pixel at a time: -log softmax(scores[n, :, i, j])[y]."""
    total, count = 0.0, 0
    N, K, H, W = scores.shape
    for n in range(N):
        for i in range(H):
            for j in range(W):
                y = labels[n, i, j]
                if y == ignore:
                    continue
                s = scores[n, :, i, j].astype(np.float64)
                total += np.log(np.sum(np.exp(s - s.max()))) + s.max() - s[y]
                count += 1
    return total / max(count, 1) if reduction == "mean" else total


def _case(rng, shape=(2, 4, 3, 5), ignored=4, spread=3.0):
    N, K, H, W = shape
    scores = rng.standard_normal(shape) * spread
    labels = rng.integers(0, K, (N, H, W))
    labels.flat[rng.choice(labels.size, ignored, replace=False)] = 255
    return scores, labels


def _loss(scores, labels, reduction):
    return softmax_cross_entropy(scores, labels, reduction=reduction)     # (loss, dscores) plays (out, cache)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_loss_equals_the_per_pixel_loop(reduction, rng):
    scores, labels = _case(rng)
    loss, _ = softmax_cross_entropy(scores, labels, reduction=reduction)
    assert loss == pytest.approx(loss_naive(scores, labels, reduction=reduction), rel=1e-12)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("shape", [(2, 4, 3, 5), (1, 21, 4, 4), (3, 2, 1, 7)])
def test_gradient_matches_numerical(reduction, shape, rng):
    # spread 1: no probability so small that the rounding of a float64 loss sum (~1e-10) would swamp it
    scores, labels = _case(rng, shape, ignored=2, spread=1.0)
    res = gradcheck(_loss, lambda dout, dscores: dscores * dout, dict(scores=scores), labels=labels,
                    reduction=reduction)
    assert res.max_error <= 1e-6, str(res)


def test_ignored_pixels_add_nothing_and_get_no_gradient(rng):
    scores, labels = _case(rng, ignored=0)
    labels[0, 1, :] = 255
    loss, dscores = softmax_cross_entropy(scores, labels)
    np.testing.assert_array_equal(dscores[0, :, 1, :], 0)
    changed = scores.copy()
    changed[0, :, 1, :] += 100 * rng.standard_normal(changed[0, :, 1, :].shape)
    assert softmax_cross_entropy(changed, labels)[0] == pytest.approx(loss, rel=1e-12)


def test_mean_is_sum_over_labelled_pixels(rng):
    scores, labels = _case(rng, ignored=5)
    count = np.sum(labels != 255)
    loss_sum, d_sum = softmax_cross_entropy(scores, labels, reduction="sum")
    loss_mean, d_mean = softmax_cross_entropy(scores, labels, reduction="mean")
    assert loss_mean == pytest.approx(loss_sum / count, rel=1e-12)
    np.testing.assert_allclose(d_mean, d_sum / count, rtol=1e-12)


def test_all_ignored_gives_zero_not_nan(rng):
    scores = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    labels = np.full((1, 4, 4), 255)
    for reduction in ("sum", "mean"):
        loss, dscores = softmax_cross_entropy(scores, labels, reduction=reduction)
        assert loss == 0.0 and not np.any(dscores) and dscores.dtype == np.float32


def test_large_scores_stay_finite():
    scores = np.array([[[[1000.0]], [[-1000.0]], [[0.0]]]], dtype=np.float32)   # exp(1000) overflows
    loss, dscores = softmax_cross_entropy(scores, np.array([[[1]]]))
    assert loss == pytest.approx(2000.0) and np.all(np.isfinite(dscores))


def test_both_backends_agree(xp, rng):
    scores, labels = _case(rng)
    scores = scores.astype(np.float32)
    loss_ref, d_ref = softmax_cross_entropy(scores, labels, reduction="mean")
    loss, d = softmax_cross_entropy(xp.asarray(scores), xp.asarray(labels), reduction="mean")
    assert loss == pytest.approx(loss_ref, rel=1e-4)
    np.testing.assert_allclose(to_numpy(d), d_ref, rtol=1e-4, atol=1e-6)
