"""Skip fusion: crop, add and scale, forward and backward side by side.

FCN fuses a coarse prediction, upsampled, with a finer one: the larger map is cropped to the
smaller one (crop), the two are summed (add), and in FCN-8s at-once the pool4 and pool3 features
are first scaled by a fixed factor (scale).
"""
from ..backend import check_inputs, check_ndim, pair


def crop_forward(x, offset, size):
    """Keep x[:, :, oy:oy+h, ox:ox+w], as Caffe's Crop layer (not centred).

    x (N, C, H, W), offset (oy, ox) or int, size (h, w) -> out (N, C, h, w), cache.
    The output is a view of x.
    """
    check_inputs("crop", x=x)
    check_ndim("crop", "x", x, "NCHW")
    oy, ox, h, w = check_crop(x.shape, offset, size)
    return x[:, :, oy:oy + h, ox:ox + w], (x.shape, oy, ox)


def check_crop(x_shape, offset, size):
    """-> (oy, ox, h, w), or a ValueError if that window does not fit inside a map of shape x_shape (N, C, H, W)."""
    (oy, ox), (h, w) = pair(offset, "offset"), pair(size, "size")
    H, W = x_shape[2:]
    if min(oy, ox) < 0 or min(h, w) < 1 or oy + h > H or ox + w > W:
        raise ValueError(f"crop: offset {(oy, ox)} with size {(h, w)} does not fit inside x of shape "
                         f"{tuple(x_shape)}; need 0 <= offset and offset + size <= {(H, W)}")
    return oy, ox, h, w


def crop_backward(dout, cache):
    """dout (N, C, h, w) -> dx (N, C, H, W): dout in the kept window, zeros around it."""
    x_shape, oy, ox = cache
    xp = check_inputs("crop_backward", dout=dout)
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    h, w = dout.shape[2:]
    dx[:, :, oy:oy + h, ox:ox + w] = dout
    return dx


def add_forward(a, b):
    """Elementwise sum of two maps of one shape (the skip fusion); the cache is empty."""
    check_inputs("add", a=a, b=b)
    if a.shape != b.shape:
        raise ValueError(f"add: a and b must have one shape, got {a.shape} and {b.shape}; crop the larger first")
    return a + b, None


def add_backward(dout, cache=None):
    """A sum passes its gradient unchanged to both branches: (da, db) = (dout, dout).

    Both are the same array, not copies: a backward that changes one in place (ReLU's does) changes the
    other, so each branch's backward must be done with it, or copy it, before the next writes into it.
    """
    return dout, dout


def scale_forward(x, factor):
    """out = factor * x with a fixed (not learned) factor, e.g. 0.01 for pool4 in FCN-8s at-once."""
    check_inputs("scale", x=x)
    return x * x.dtype.type(factor), factor


def scale_backward(dout, factor):
    """dx = factor * dout."""
    return dout * dout.dtype.type(factor)
