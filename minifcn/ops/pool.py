"""Max pooling with Caffe's rounding, forward and backward side by side.

Legend:  N batch, C channels, H x W input, k kernel, s stride, p pad, OH x OW output.

Caffe rounds the output size up (ceil), so a last, partial window is kept:
    OH = ceil((H + 2p - k) / s) + 1,  and one less if that last window would start inside the
    bottom/right padding only, i.e. if (OH - 1) * s >= H + p.
Windows are clipped to the input: padding never wins a max. This is PyTorch's ceil_mode=True.
(Caffe tests the last window only when pad > 0; the two differ only for a kernel smaller than the
stride without padding, where Caffe would emit a window that holds no pixel at all.)

The forward loops over the k*k kernel taps (strided slices of an input padded with -inf), keeping
the running max and which tap gave it. The backward sends each window's gradient to that one
tap; where windows overlap (k > s), a pixel collects the gradients of every window it won.
"""
import math

import numpy as np

from ..backend import check_inputs, check_ndim, pair


def pool_output_size(size, kernel, stride, pad=0):
    """Caffe's pooled length: ceil((size + 2*pad - kernel) / stride) + 1, less the last window
    when that window would start inside the padding."""
    out = int(math.ceil((size + 2 * pad - kernel) / stride)) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _geometry(x, kernel, stride, pad):
    (kh, kw), (sh, sw), (ph, pw) = pair(kernel, "kernel"), pair(stride, "stride"), pair(pad, "pad")
    if min(kh, kw, sh, sw) < 1 or not (0 <= ph < kh and 0 <= pw < kw):
        raise ValueError(f"max_pool2d: need kernel >= 1, stride >= 1 and 0 <= pad < kernel, "
                         f"got kernel={kernel}, stride={stride}, pad={pad}")
    H, W = x.shape[2:]
    OH, OW = pool_output_size(H, kh, sh, ph), pool_output_size(W, kw, sw, pw)
    if OH < 1 or OW < 1:
        raise ValueError(f"max_pool2d: kernel {kh}x{kw} does not fit the padded input {H + 2 * ph}x{W + 2 * pw} "
                         f"(x shape {x.shape}); use a larger input or a smaller kernel")
    return kh, kw, sh, sw, ph, pw, OH, OW


def _padded_shape(OH, OW, kh, kw, sh, sw):
    """Rows and columns that the taps reach: (OH-1)*s + k (ceil mode may reach past H + 2p)."""
    return (OH - 1) * sh + kh, (OW - 1) * sw + kw


def max_pool2d_forward(x, kernel=2, stride=2, pad=0):
    """x (N, C, H, W) -> out (N, C, OH, OW), cache (OH, OW by Caffe's ceil rule, see the module).

    kernel, stride, pad: an int or a pair (rows, columns). Each window is clipped to the input (padding
    never wins). out has x's dtype. cache = (x.shape, arg, (kh, kw, sh, sw, ph, pw)), where
    arg (N, C, OH, OW), integer, is the tap t = i*kw + j (row i, column j of the window, counted from the
    window's top-left corner, padding included) that holds the window's max; when several taps tie, the
    first one in that order wins (the smallest t)."""
    xp = check_inputs("max_pool2d", x=x)
    check_ndim("max_pool2d", "x", x, "NCHW")
    kh, kw, sh, sw, ph, pw, OH, OW = _geometry(x, kernel, stride, pad)
    N, C, H, W = x.shape
    Hp, Wp = _padded_shape(OH, OW, kh, kw, sh, sw)
    x_pad = xp.full((N, C, Hp, Wp), -xp.inf, dtype=x.dtype)
    h, w = min(H, Hp - ph), min(W, Wp - pw)                       # rows/cols of x that any window sees
    x_pad[:, :, ph:ph + h, pw:pw + w] = x[:, :, :h, :w]
    out = None
    arg = xp.zeros((N, C, OH, OW), dtype=np.int8 if kh * kw < 128 else np.int32)  # tap t = i*kw + j that won
    for i in range(kh):
        for j in range(kw):
            tap = x_pad[:, :, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw]   # (N, C, OH, OW)
            if out is None:
                out = tap.copy()
                continue
            better = tap > out                                     # strict: the first max wins ties
            out = xp.where(better, tap, out)
            arg = xp.where(better, arg.dtype.type(i * kw + j), arg)
    return out, (x.shape, arg, (kh, kw, sh, sw, ph, pw))


def max_pool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W), dout's dtype: each window's gradient goes to its max, the one
    tap arg names (only that one, even when others tie); a pixel that wins several overlapping windows gets
    the sum of their gradients."""
    x_shape, arg, (kh, kw, sh, sw, ph, pw) = cache
    xp = check_inputs("max_pool2d_backward", dout=dout)
    N, C, H, W = x_shape
    OH, OW = arg.shape[2:]
    Hp, Wp = _padded_shape(OH, OW, kh, kw, sh, sw)
    dx_pad = xp.zeros((N, C, max(Hp, H + ph), max(Wp, W + pw)), dtype=dout.dtype)   # every tap, and all of x
    for i in range(kh):
        for j in range(kw):
            won = arg == i * kw + j                                               # (N, C, OH, OW)
            dx_pad[:, :, i:i + sh * (OH - 1) + 1:sh, j:j + sw * (OW - 1) + 1:sw] += xp.where(won, dout, 0)
    return dx_pad[:, :, ph:ph + H, pw:pw + W]


def max_pool2d_naive(x, kernel=2, stride=2, pad=0):
    """Loop-by-loop max pooling (small shapes only): Caffe's windows, clipped to the input."""
    kh, kw, sh, sw, ph, pw, OH, OW = _geometry(x, kernel, stride, pad)
    N, C, H, W = x.shape
    out = np.zeros((N, C, OH, OW), dtype=np.float64)
    for n in range(N):
        for c in range(C):
            for oy in range(OH):
                for ox in range(OW):
                    y0, x0 = oy * sh - ph, ox * sw - pw
                    ys = range(max(y0, 0), min(y0 + kh, H))
                    xs = range(max(x0, 0), min(x0 + kw, W))
                    out[n, c, oy, ox] = max(float(x[n, c, y, xx]) for y in ys for xx in xs)
    return out
