"""Metrics against a hand-computed confusion matrix and a brute-force per-class count."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minifcn.metrics import confusion, format_table, scores


def test_hand_computed_example():
    label = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    hist = confusion(pred, label, 3)
    # truth 0: (0 -> 0), (0 -> 1); truth 1: three times 1; truth 2: (2 -> 2), (2 -> 0); the 255 pixel is skipped
    np.testing.assert_array_equal(hist, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    r = scores(hist)
    assert r["pixel_acc"] == pytest.approx(5 / 7)
    assert r["mean_acc"] == pytest.approx((1 / 2 + 3 / 3 + 1 / 2) / 3)
    iu = [1 / (2 + 2 - 1), 3 / (3 + 4 - 3), 1 / (2 + 1 - 1)]      # n_ii / (t_i + p_i - n_ii)
    np.testing.assert_allclose(r["iu"], iu)
    assert r["mean_iu"] == pytest.approx(np.mean(iu))
    assert r["fw_iu"] == pytest.approx((2 * iu[0] + 3 * iu[1] + 2 * iu[2]) / 7)
    assert "mean IU" in format_table(r, ["bg", "a", "b"])


def test_absent_class_is_left_out_of_the_means():
    hist = confusion(np.array([0, 1, 1]), np.array([0, 1, 1]), 3)     # class 2 nowhere
    r = scores(hist)
    assert np.isnan(r["iu"][2]) and r["mean_iu"] == 1.0 and r["mean_acc"] == 1.0


@given(st.integers(2, 6), st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_against_a_brute_force_count(K, n, seed):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, K + 1, n)
    label[label == K] = 255
    pred = rng.integers(0, K, n)
    r = scores(confusion(pred, label, K))
    valid = label != 255
    if not valid.any():
        return
    assert r["pixel_acc"] == pytest.approx(np.mean(pred[valid] == label[valid]))
    ious, accs, weighted = [], [], 0.0
    for k in range(K):
        tp = np.sum((pred == k) & (label == k))
        union = np.sum(((pred == k) & valid) | (label == k))
        if union:
            ious.append(tp / union)
            weighted += np.sum(label == k) * tp / union
        if np.any(label == k):
            accs.append(tp / np.sum(label == k))
    assert r["mean_iu"] == pytest.approx(np.mean(ious))
    assert r["mean_acc"] == pytest.approx(np.mean(accs))
    assert r["fw_iu"] == pytest.approx(weighted / valid.sum())


def test_accumulating_over_images_equals_one_big_matrix(rng):
    labels = [rng.integers(0, 4, (5, 7)) for _ in range(3)]
    preds = [rng.integers(0, 4, (5, 7)) for _ in range(3)]
    total = sum(confusion(p, l, 4) for p, l in zip(preds, labels))
    np.testing.assert_array_equal(total, confusion(np.stack(preds), np.stack(labels), 4))


def test_errors():
    with pytest.raises(ValueError, match=r"one shape"):
        confusion(np.zeros(3, int), np.zeros(4, int), 2)
    with pytest.raises(ValueError, match=r"predictions \[5\] are outside \[0, 3\)"):
        confusion(np.array([5]), np.array([0]), 3)


def test_an_image_with_no_labelled_pixel_counts_nothing(xp, monkeypatch):
    """All void (255), or labels below 0: an empty matrix, on either device (CuPy's bincount cannot count an
    empty selection, so confusion must never hand it one). Predictions under void pixels are never checked."""
    if xp is np:                                            # NumPy's bincount, as strict as CuPy's
        numpy_bincount = np.bincount

        def bincount(a, *args, **kwargs):
            assert a.size > 0, "bincount of an empty array: CuPy raises ValueError here"
            return numpy_bincount(a, *args, **kwargs)
        monkeypatch.setattr(np, "bincount", bincount)
    pred = xp.asarray(np.array([[0, 7], [2, -1]]))
    for label in (np.full((2, 2), 255), np.array([[-1, 255], [300, -5]])):
        hist = confusion(pred, xp.asarray(label), 3)
        assert isinstance(hist, np.ndarray) and hist.shape == (3, 3) and hist.sum() == 0
    hist = confusion(pred, xp.asarray(np.array([[0, 255], [1, 255]])), 3)
    np.testing.assert_array_equal(hist, [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
