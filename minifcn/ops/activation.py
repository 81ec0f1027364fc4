"""ReLU and dropout, forward and backward side by side. Any shape; the output has the input's shape."""
import numbers

from ..backend import check_inputs


def relu_forward(x):
    """out = max(x, 0); the cache is the mask x > 0 (one byte per entry)."""
    xp = check_inputs("relu", x=x)
    mask = x > 0
    return xp.where(mask, x, x.dtype.type(0)), mask


def relu_backward(dout, mask):
    """dx = dout where x > 0, else 0 (the derivative at exactly 0 is taken as 0, as in Caffe)."""
    xp = check_inputs("relu_backward", dout=dout)
    return xp.where(mask, dout, dout.dtype.type(0))


def dropout_forward(x, p=0.5, train=True, rng=None):
    """Inverted dropout: in training each entry is kept with probability 1 - p and scaled by 1/(1-p),
    so nothing changes at test time (train=False returns x itself).

    rng: a seed (int), a Generator of x's array module (numpy.random.Generator for NumPy arrays,
    cupy.random.Generator for CuPy), or None for a fresh unseeded one. The cache is the scaled mask.
    """
    xp = check_inputs("dropout", x=x)
    if not 0 <= p < 1:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not train or p == 0:
        return x, None
    if rng is None or isinstance(rng, numbers.Integral):          # a seed: Python's int or NumPy's int64 alike
        rng = xp.random.default_rng(rng)
    mask = (rng.random(x.shape, dtype=x.dtype) >= p) * x.dtype.type(1 / (1 - p))   # 0 or 1/(1-p)
    return x * mask, mask


def dropout_backward(dout, mask):
    """dx = dout * mask (the same entries dropped and the same scale as in the forward)."""
    return dout if mask is None else dout * mask
