"""Per-pixel softmax cross-entropy: the FCN loss, with its gradient.

Legend:  N batch, K classes, H x W pixels.

For every pixel with a label y (not the ignore label):
    p = softmax(scores[n, :, i, j]),  loss_pixel = -log p[y],  dloss_pixel/dscores = p - onehot(y).
"sum" adds the pixel losses (the reference's unnormalised loss: the gradient grows with the image,
hence its tiny learning rate 1e-10 with momentum 0.99); "mean" divides by the number of labelled
pixels (pairs with a learning rate around 1e-4 and momentum 0.9).
"""
import numpy as np

from ..backend import check_inputs, check_ndim, device_of, to_numpy


def softmax_cross_entropy(scores, labels, ignore_label=255, reduction="sum"):
    """scores (N, K, H, W) float, labels (N, H, W) int -> (loss: float, dscores (N, K, H, W)).

    Pixels labelled `ignore_label` add nothing to the loss and get a zero gradient; a batch with no
    labelled pixel gives loss 0.0 and a zero gradient (never NaN). Labels must lie in [0, K) or be
    the ignore label. dscores has the scores' dtype (float32 scores give float32 dscores).
    """
    xp = check_inputs("softmax_cross_entropy", scores=scores)
    check_ndim("softmax_cross_entropy", "scores", scores, "NKHW")
    check_ndim("softmax_cross_entropy", "labels", labels, "NHW")
    if device_of(labels) != device_of(scores):
        raise TypeError(f"softmax_cross_entropy: scores are on {device_of(scores)} but labels on "
                        f"{device_of(labels)}; move labels with minifcn.backend.to_device(labels, "
                        f"'{device_of(scores)}')")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"softmax_cross_entropy: labels must be integers, got {labels.dtype}; "
                        "use labels.astype(np.int64)")
    N, K, H, W = scores.shape
    if labels.shape != (N, H, W):
        raise ValueError(f"softmax_cross_entropy: labels must have shape {(N, H, W)} to match scores "
                         f"{scores.shape}, got {labels.shape}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"softmax_cross_entropy: reduction must be 'sum' or 'mean', got {reduction!r}")
    labels = labels.astype(np.int64, copy=False)
    valid = labels != ignore_label                                          # (N, H, W)
    bad = valid & ((labels < 0) | (labels >= K))
    if bool(bad.any()):
        seen = np.unique(to_numpy(labels[bad]))[:10].tolist()
        raise ValueError(f"softmax_cross_entropy: labels {seen} are outside [0, {K}) and are not the "
                         f"ignore label {ignore_label}; check num_classes or map void pixels to {ignore_label}")

    # BEGIN SOLUTION
    shifted = scores - scores.max(axis=1, keepdims=True)                    # (N, K, H, W), max is 0
    log_z = xp.log(xp.exp(shifted).sum(axis=1, keepdims=True))              # (N, 1, H, W) log-sum-exp
    log_p = shifted - log_z                                                 # log softmax
    y = xp.where(valid, labels, 0)[:, None]                                 # (N, 1, H, W), safe index
    picked = xp.take_along_axis(log_p, y, axis=1)[:, 0]                     # (N, H, W) log p[y]
    loss = -float(xp.sum(xp.where(valid, picked, 0), dtype=np.float64))

    dscores = xp.exp(log_p)                                                 # softmax p
    onehot = xp.arange(K).reshape(1, K, 1, 1) == y                          # (N, K, H, W)
    dscores = xp.where(onehot, dscores - 1, dscores) * valid[:, None]       # p - onehot, 0 if ignored
    if reduction == "mean":
        count = int(valid.sum())
        if count:
            loss /= count
            dscores /= dscores.dtype.type(count)
    return loss, dscores.astype(scores.dtype, copy=False)
    # END SOLUTION
