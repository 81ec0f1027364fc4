"""The paper's four segmentation metrics, from one confusion matrix accumulated over a whole split.

Legend:  K classes; hist[i, j] = n_ij, the number of pixels of true class i predicted as class j;
         t_i = sum_j n_ij, the pixels of class i.

    pixel accuracy            sum_i n_ii / sum_i t_i
    mean accuracy             (1/K) sum_i n_ii / t_i
    mean IU                   (1/K) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
    frequency-weighted IU     (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

A class absent from the truth has no accuracy (0/0), and one that appears neither in the truth nor in
the predictions no IU: each is left out of its mean (K there counts only the classes that have one;
NaN in the per-class table), as in the reference's evaluation.
"""
import numpy as np

from .backend import to_numpy, xp_of


def confusion(pred, label, num_classes):
    """(K, K) int64 confusion matrix, rows = truth, columns = prediction.

    pred and label: integer arrays of one shape, NumPy or CuPy. Pixels whose label lies outside
    [0, K) (the ignore label 255 among them) are not counted.
    """
    if pred.shape != label.shape:
        raise ValueError(f"confusion: pred and label must have one shape, got {pred.shape} and {label.shape}")
    xp = xp_of(pred, label)
    K = int(num_classes)
    label = label.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    keep = (label >= 0) & (label < K)
    outside = keep & ((pred < 0) | (pred >= K))
    if bool(outside.any()):
        bad = np.unique(to_numpy(pred[outside]))[:5].tolist()
        raise ValueError(f"confusion: predictions {bad} are outside [0, {K}); is num_classes right?")
    # Pixel (truth t, prediction p) counts in bin K*t + p; ignored pixels go to one extra bin, K*K, dropped
    # after the count (no boolean selection: CuPy's bincount cannot take an empty array, NumPy's can).
    hist = xp.bincount(xp.where(keep, K * label + pred, K * K), minlength=K * K + 1)[:K * K]
    return to_numpy(hist).reshape(K, K).astype(np.int64)


def scores(hist):
    """dict with pixel_acc, mean_acc, mean_iu, fw_iu (floats) and per-class iu and acc (arrays, NaN = absent)."""
    hist = np.asarray(hist, dtype=np.float64)
    n_ii = np.diag(hist)
    t_i = hist.sum(axis=1)                      # pixels of each true class
    p_j = hist.sum(axis=0)                      # pixels predicted as each class
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = n_ii / t_i
        iu = n_ii / (t_i + p_j - n_ii)
        freq = t_i / t_i.sum()
        return {
            "pixel_acc": float(n_ii.sum() / t_i.sum()) if t_i.sum() else float("nan"),
            "mean_acc": float(np.nanmean(acc)) if np.any(t_i) else float("nan"),
            "mean_iu": float(np.nanmean(iu)) if np.any(np.isfinite(iu)) else float("nan"),
            "fw_iu": float(np.nansum(freq * iu)) if t_i.sum() else float("nan"),
            "iu": iu,
            "acc": acc,
        }


def format_table(result, class_names=None):
    """The four metrics and the per-class IU as a plain-text table."""
    lines = [f"pixel acc {result['pixel_acc']:.4f}   mean acc {result['mean_acc']:.4f}   "
             f"mean IU {result['mean_iu']:.4f}   f.w. IU {result['fw_iu']:.4f}", "", f"{'class':>16}  {'IU':>7}  {'acc':>7}"]
    for k, (iu, acc) in enumerate(zip(result["iu"], result["acc"])):
        name = class_names[k] if class_names else str(k)
        lines.append(f"{name:>16}  {iu:7.4f}  {acc:7.4f}")
    return "\n".join(lines)
