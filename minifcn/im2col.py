"""im2col / col2im: turn a convolution into one matrix product.

Legend:  N batch, C channels, H x W input, KH x KW kernel, OH x OW output,
         s stride, p pad, d dilation,
         K = C*KH*KW rows of the column matrix, P = OH*OW output positions.

For every output position (oy, ox) a convolution reads a KH x KW patch of every channel. im2col
copies those patches into the columns of a matrix of shape (N, K, P); a convolution with weights
W (F, C, KH, KW) is then the matrix product W.reshape(F, K) @ cols -> (N, F, P), already in the
(N, F, OH, OW) memory order, with no transpose.

The fast version loops over the KH*KW kernel taps, not over pixels: tap (i, j) of every patch is
one strided slice of the padded input, x_pad[:, :, i*d : i*d + s*(OH-1) + 1 : s, ...], so the
work per tap is a single array copy. It runs unchanged on NumPy and CuPy arrays.

col2im is the adjoint (the transpose) of im2col: it adds every column entry back onto the pixel it
was read from. Where patches overlap (kernel larger than the stride) a pixel receives several
contributions. The naive loop versions at the bottom are the specification; tests hold the fast
versions to them.
"""
from .backend import pair, xp_of


def conv_output_size(size, kernel, stride=1, pad=0, dilation=1):
    """Output length of a convolution: floor((size + 2*pad - dilation*(kernel-1) - 1) / stride) + 1."""
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _geometry(shape, kernel, stride, pad, dilation, op):
    N, C, H, W = shape
    (KH, KW), (sh, sw), (ph, pw), (dh, dw) = (pair(kernel, "kernel"), pair(stride, "stride"),
                                              pair(pad, "pad"), pair(dilation, "dilation"))
    if min(KH, KW, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"{op}: kernel, stride and dilation must be >= 1 and pad >= 0, got kernel={kernel}, "
                         f"stride={stride}, pad={pad}, dilation={dilation}")
    OH, OW = conv_output_size(H, KH, sh, ph, dh), conv_output_size(W, KW, sw, pw, dw)
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: kernel {KH}x{KW} (dilation {dh}x{dw}) is larger than the padded input "
                         f"{H + 2 * ph}x{W + 2 * pw} (input {H}x{W}, pad {ph}x{pw}); "
                         "use a larger input, more padding or a smaller kernel")
    return N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW


def _is_pointwise(KH, KW, sh, sw, ph, pw):
    """A 1x1 kernel with stride 1 and no padding: the columns are the input itself."""
    return (KH, KW, sh, sw, ph, pw) == (1, 1, 1, 1, 0, 0)


def im2col(x, kernel, stride=1, pad=0, dilation=1, op="im2col"):
    """(N, C, H, W) -> cols (N, C*KH*KW, OH*OW); row index c*KH*KW + i*KW + j, column oy*OW + ox.

    A 1x1 kernel with stride 1 and no padding returns a reshaped view of x (no copy).
    """
    xp = xp_of(x)
    N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _geometry(x.shape, kernel, stride, pad, dilation, op)
    # BEGIN SOLUTION
    if _is_pointwise(KH, KW, sh, sw, ph, pw):
        return x.reshape(N, C, H * W)
    x_pad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    cols = xp.empty((N, C, KH, KW, OH, OW), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            y0, x0 = i * dh, j * dw
            cols[:, :, i, j] = x_pad[:, :, y0:y0 + sh * (OH - 1) + 1:sh, x0:x0 + sw * (OW - 1) + 1:sw]
    return cols.reshape(N, C * KH * KW, OH * OW)
    # END SOLUTION


def col2im(cols, x_shape, kernel, stride=1, pad=0, dilation=1, op="col2im"):
    """cols (N, C*KH*KW, OH*OW) -> (N, C, H, W): the adjoint of im2col (overlapping entries add up)."""
    xp = xp_of(cols)
    N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _geometry(x_shape, kernel, stride, pad, dilation, op)
    if cols.shape != (N, C * KH * KW, OH * OW):
        raise ValueError(f"{op}: cols must have shape {(N, C * KH * KW, OH * OW)} for x_shape {tuple(x_shape)}, "
                         f"got {cols.shape}")
    # BEGIN SOLUTION
    if _is_pointwise(KH, KW, sh, sw, ph, pw):
        return cols.reshape(N, C, H, W)
    cols = cols.reshape(N, C, KH, KW, OH, OW)
    x_pad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for i in range(KH):
        for j in range(KW):
            y0, x0 = i * dh, j * dw
            # Within one tap the strided slice touches each pixel once, so += is safe here.
            x_pad[:, :, y0:y0 + sh * (OH - 1) + 1:sh, x0:x0 + sw * (OW - 1) + 1:sw] += cols[:, :, i, j]
    return x_pad[:, :, ph:ph + H, pw:pw + W]
    # END SOLUTION


# ----------------------------------------------------------------------------- the specification

def _patch_entries(x_shape, kernel, stride, pad, dilation, op):
    """Every (n, c, y, x, row, col) such that column entry cols[n, row, col] is input pixel x[n, c, y, x]:
    im2col copies along this list, col2im adds back along it. Pixels in the padding are skipped."""
    N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _geometry(x_shape, kernel, stride, pad, dilation, op)
    for n in range(N):
        for c in range(C):
            for i in range(KH):
                for j in range(KW):
                    for oy in range(OH):
                        for ox in range(OW):
                            y, xx = oy * sh - ph + i * dh, ox * sw - pw + j * dw   # the input pixel read
                            if 0 <= y < H and 0 <= xx < W:
                                yield n, c, y, xx, (c * KH + i) * KW + j, oy * OW + ox


def im2col_naive(x, kernel, stride=1, pad=0, dilation=1):
    """Loop-by-loop im2col (small shapes only): what im2col must return, entry by entry."""
    N, C, H, W, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _geometry(x.shape, kernel, stride, pad, dilation,
                                                                   "im2col_naive")
    cols = xp_of(x).zeros((N, C * KH * KW, OH * OW), dtype=x.dtype)
    for n, c, y, xx, row, col in _patch_entries(x.shape, kernel, stride, pad, dilation, "im2col_naive"):
        cols[n, row, col] = x[n, c, y, xx]
    return cols


def col2im_naive(cols, x_shape, kernel, stride=1, pad=0, dilation=1):
    """Loop-by-loop col2im (small shapes only): every column entry added to the pixel it came from,
    along the same list of entries as im2col_naive (that is what makes the two adjoint)."""
    x = xp_of(cols).zeros(tuple(x_shape), dtype=cols.dtype)
    for n, c, y, xx, row, col in _patch_entries(x_shape, kernel, stride, pad, dilation, "col2im_naive"):
        x[n, c, y, xx] += cols[n, row, col]
    return x
