"""Convolution and transposed convolution, forward and backward side by side.

Legend:  N batch, C input channels, H x W input, F filters (output channels), KH x KW kernel,
         OH x OW output, K = C*KH*KW, P = OH*OW.

conv2d            out[n, f] = b[f] + sum_c W[f, c] (*) x_pad[n, c]   (cross-correlation, as in Caffe)
                  = W.reshape(F, K) @ im2col(x)                      one matrix product per image
conv_transpose2d  the adjoint of conv2d in x: x -> W.reshape(C_in, C_out*KH*KW).T @ x, then col2im.
                  Caffe's "Deconvolution"; FCN uses it for upsampling with a bilinear kernel.

The forward keeps x (not the columns) in its cache: the columns are KH*KW times larger than x and
cheap to rebuild, so the backward calls im2col again.
"""
import numpy as np

from ..backend import check_inputs, check_ndim, pair, to_numpy
from ..im2col import col2im, conv_output_size, im2col

_W_CONV = ("F", "C", "KH", "KW")
_W_DECONV = ("C_in", "C_out", "KH", "KW")


def _check_bias(op, b, n):
    if b is not None and b.shape != (n,):
        raise ValueError(f"{op}: b must have shape ({n},) (one bias per output channel), got {b.shape}")


def _dW_sum(a, cols):
    """sum_n a[n] @ cols[n].T:  a (N, M, P), cols (N, K, P) -> (M, K), one matrix product per image."""
    out = a[0] @ cols[0].T
    for n in range(1, a.shape[0]):
        out += a[n] @ cols[n].T
    return out


# ----------------------------------------------------------------------------- conv2d

def check_conv2d(x, W, b):
    """The checks every conv2d forward makes (this one and minifcn.fast's); returns x's array module."""
    xp = check_inputs("conv2d", x=x, W=W, b=b)
    check_ndim("conv2d", "x", x, "NCHW")
    check_ndim("conv2d", "W", W, _W_CONV)
    if W.shape[1] != x.shape[1]:
        raise ValueError(f"conv2d: W expects C={W.shape[1]} input channels (W shape {W.shape}) "
                         f"but x has C={x.shape[1]} (x shape {x.shape})")
    _check_bias("conv2d", b, W.shape[0])
    return xp


def conv2d_forward(x, W, b=None, stride=1, pad=0, dilation=1):
    """Convolution (cross-correlation) by im2col and one matrix product.

    x (N, C, H, W), W (F, C, KH, KW), b (F,) or None  ->  out (N, F, OH, OW), cache
    OH = floor((H + 2*pad - dilation*(KH-1) - 1) / stride) + 1, likewise OW.
    cache = (x, W, b is not None, stride, pad, dilation): what conv2d_backward unpacks.
    """
    xp = check_conv2d(x, W, b)
    F, C, KH, KW = W.shape
    # BEGIN SOLUTION
    N = x.shape[0]
    cols = im2col(x, (KH, KW), stride, pad, dilation, op="conv2d")       # (N, K, P)
    out = xp.matmul(W.reshape(F, -1), cols)                               # (N, F, P)
    if b is not None:
        out += b.reshape(1, F, 1)
    OH = conv_output_size(x.shape[2], KH, pair(stride)[0], pair(pad)[0], pair(dilation)[0])
    out = out.reshape(N, F, OH, -1)                                       # (N, F, OH, OW)
    return out, (x, W, b is not None, stride, pad, dilation)
    # END SOLUTION


def conv2d_backward(dout, cache):
    """dout (N, F, OH, OW) -> dx (N, C, H, W), dW (F, C, KH, KW), db (F,) (None if there was no bias).

    out = W2 @ cols (W2 = W.reshape(F, K))  gives  dW2 = sum_n dout[n] @ cols[n].T,  dcols = W2.T @ dout,
    dx = col2im(dcols).
    """
    x, W, has_bias, stride, pad, dilation = cache
    xp = check_inputs("conv2d_backward", dout=dout, W=W)
    F, C, KH, KW = W.shape
    # BEGIN SOLUTION
    N = x.shape[0]
    dout2 = dout.reshape(N, F, -1)                                        # (N, F, P)
    cols = im2col(x, (KH, KW), stride, pad, dilation, op="conv2d")        # (N, K, P), rebuilt
    dW = _dW_sum(dout2, cols).reshape(W.shape)                            # (F, C, KH, KW)
    dcols = xp.matmul(W.reshape(F, -1).T, dout2)                          # (N, K, P)
    dx = col2im(dcols, x.shape, (KH, KW), stride, pad, dilation, op="conv2d")
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dW, db
    # END SOLUTION


# ----------------------------------------------------------------------------- conv_transpose2d

def conv_transpose2d_output_size(size, kernel, stride=1, pad=0):
    """(size - 1) * stride - 2 * pad + kernel: the input size of the conv2d this op is the adjoint of."""
    return (size - 1) * stride - 2 * pad + kernel


def conv_transpose2d_forward(x, W, b=None, stride=1, pad=0):
    """Transposed convolution: the adjoint of conv2d in x, with W in Caffe's Deconvolution layout.

    x (N, C_in, H, W), W (C_in, C_out, KH, KW), b (C_out,) or None  ->  out (N, C_out, OH, OW), cache
    OH = (H - 1) * stride - 2 * pad + KH, likewise OW.
    Each input pixel stamps a copy of its kernel, scaled by its value, onto the output, `stride`
    pixels apart; stamps that overlap add up (that is col2im).
    cache = (x, W, b is not None, stride, pad): what conv_transpose2d_backward unpacks.
    """
    xp = check_inputs("conv_transpose2d", x=x, W=W, b=b)
    check_ndim("conv_transpose2d", "x", x, "NCHW")
    check_ndim("conv_transpose2d", "W", W, _W_DECONV)
    if W.shape[0] != x.shape[1]:
        raise ValueError(f"conv_transpose2d: W expects C_in={W.shape[0]} input channels (W shape {W.shape}, "
                         f"layout (C_in, C_out, KH, KW)) but x has C={x.shape[1]} (x shape {x.shape})")
    C_in, C_out, KH, KW = W.shape
    _check_bias("conv_transpose2d", b, C_out)
    N, _, H, W_ = x.shape
    (sh, sw), (ph, pw) = pair(stride, "stride"), pair(pad, "pad")
    OH, OW = conv_transpose2d_output_size(H, KH, sh, ph), conv_transpose2d_output_size(W_, KW, sw, pw)
    if OH < 1 or OW < 1:
        raise ValueError(f"conv_transpose2d: output would be {OH}x{OW} for input {H}x{W_}, kernel {KH}x{KW}, "
                         f"stride {stride}, pad {pad}; reduce pad or enlarge the kernel")
    # BEGIN SOLUTION
    cols = xp.matmul(W.reshape(C_in, -1).T, x.reshape(N, C_in, H * W_))  # (N, C_out*KH*KW, H*W)
    out = col2im(cols, (N, C_out, OH, OW), (KH, KW), stride, pad, op="conv_transpose2d")
    if b is not None:
        out += b.reshape(1, C_out, 1, 1)
    return out, (x, W, b is not None, stride, pad)
    # END SOLUTION


def conv_transpose2d_backward(dout, cache):
    """dout (N, C_out, OH, OW) -> dx (N, C_in, H, W), dW (C_in, C_out, KH, KW), db (C_out,) or None.

    The adjoint of col2im is im2col, so the backward is a plain convolution of dout with W.
    """
    x, W, has_bias, stride, pad = cache
    xp = check_inputs("conv_transpose2d_backward", dout=dout, W=W)
    C_in, C_out, KH, KW = W.shape
    N, _, H, W_ = x.shape
    # BEGIN SOLUTION
    dcols = im2col(dout, (KH, KW), stride, pad, op="conv_transpose2d")    # (N, C_out*KH*KW, H*W)
    dx = xp.matmul(W.reshape(C_in, -1), dcols).reshape(x.shape)           # (N, C_in, H, W)
    dW = _dW_sum(x.reshape(N, C_in, H * W_), dcols).reshape(W.shape)      # (C_in, C_out, KH, KW)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dW, db
    # END SOLUTION


# ----------------------------------------------------------------------------- bilinear upsampling

def bilinear_kernel(k, dtype=np.float32):
    """(k, k) bilinear interpolation kernel, the reference FCN's rule.

    factor = (k + 1) // 2; centre c = factor - 1 for odd k, factor - 0.5 for even k;
    value[i, j] = (1 - |i - c| / factor) * (1 - |j - c| / factor).
    With k = 2 * stride (e.g. k4/s2, k16/s8, k64/s32) a transposed convolution with this kernel
    interpolates linearly between input pixels.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"bilinear_kernel: k must be a positive int, got {k!r}")
    # BEGIN SOLUTION
    factor = (k + 1) // 2
    centre = factor - 1 if k % 2 == 1 else factor - 0.5
    ramp = 1 - np.abs(np.arange(k) - centre) / factor                   # (k,)
    return np.outer(ramp, ramp).astype(dtype)
    # END SOLUTION


def bilinear_weight(channels, k, dtype=np.float32):
    """(channels, channels, k, k) transposed-conv weight: bilinear_kernel(k) on the channel diagonal.

    Channel c is upsampled on its own (W[c, c] is the kernel, W[c, d != c] is zero), as in the
    reference's `surgery.interp`.
    """
    # BEGIN SOLUTION
    W = np.zeros((channels, channels, k, k), dtype=dtype)
    W[np.arange(channels), np.arange(channels)] = bilinear_kernel(k, dtype)
    return W
    # END SOLUTION


# ----------------------------------------------------------------------------- the specification

def conv2d_naive(x, W, b=None, stride=1, pad=0, dilation=1):
    """Loop-by-loop convolution (small shapes only): the definition conv2d_forward must meet.
    Dilation d spreads the kernel's taps d pixels apart (tap i reads row oy*stride - pad + i*d)."""
    N, C, H, W_ = x.shape
    F, _, KH, KW = W.shape
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(pad), pair(dilation)
    OH, OW = (H + 2 * ph - dh * (KH - 1) - 1) // sh + 1, (W_ + 2 * pw - dw * (KW - 1) - 1) // sw + 1
    out = np.zeros((N, F, OH, OW), dtype=np.float64)
    for n in range(N):
        for f in range(F):
            for oy in range(OH):
                for ox in range(OW):
                    total = 0.0 if b is None else float(b[f])
                    for c in range(C):
                        for i in range(KH):
                            for j in range(KW):
                                y, xx = oy * sh - ph + i * dh, ox * sw - pw + j * dw
                                if 0 <= y < H and 0 <= xx < W_:
                                    total += float(x[n, c, y, xx]) * float(W[f, c, i, j])
                    out[n, f, oy, ox] = total
    return out


def conv_transpose2d_naive(x, W, b=None, stride=1, pad=0):
    """Loop-by-loop transposed convolution (small shapes only): every input pixel stamps its kernel."""
    N, C_in, H, W_ = x.shape
    _, C_out, KH, KW = W.shape
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    OH, OW = (H - 1) * sh - 2 * ph + KH, (W_ - 1) * sw - 2 * pw + KW
    out = np.zeros((N, C_out, OH, OW), dtype=np.float64)
    for n in range(N):
        for ci in range(C_in):
            for y in range(H):
                for xx in range(W_):
                    for co in range(C_out):
                        for i in range(KH):
                            for j in range(KW):
                                oy, ox = y * sh - ph + i, xx * sw - pw + j
                                if 0 <= oy < OH and 0 <= ox < OW:
                                    out[n, co, oy, ox] += float(x[n, ci, y, xx]) * float(W[ci, co, i, j])
    if b is not None:
        out += np.asarray(to_numpy(b), dtype=np.float64).reshape(1, C_out, 1, 1)
    return out
