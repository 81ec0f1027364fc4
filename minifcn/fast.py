"""Fast paths: the same ops as minifcn.ops, arranged for speed; the layers use them when ENABLED.

Legend:  N batch, C input channels, H x W input, F filters, KH x KW kernel, sh x sw stride, ph x pw pad,
         dh x dw dilation, OH x OW output, K = C*KH*KW rows of the columns;
         a band: r consecutive output rows (r0 .. r0 + r - 1), whose columns (K, r*OW) are built together;
         g = (KH, KW, sh, sw, dh, dw, OW): what building a band's columns needs (also minifcn.gpu_kernels').

What makes the plain ops slow is not the arithmetic but the memory around it:

- conv2d builds the whole column matrix (K, OH*OW) at once. For conv1_2 of VGG16 on a 500x500
  image that is 576 x 698^2 floats, 1.1 GB, written once, read once and handed back to the
  operating system, which must zero it again next time. Here the columns are built one band at a
  time, about BLOCK floats, in one buffer that the matrix product then reads while it is still in
  cache. The backward goes band by band too: dW collects dout_band @ cols_band.T and the
  band's dcols go straight back onto the input gradient (col2im of the band).
- the input gradient of a stride-1 convolution is itself a convolution: of dout with the kernel turned
  by 180 degrees, so it runs as a forward pass in bands, with no col2im (which reads, adds and
  writes dx once per kernel tap). Its columns have F*KH*KW rows instead of C*KH*KW, so it is taken
  where F <= C.
- a 1x1 convolution (fc7, the score layers) needs no columns: the input is already the matrix.
- a 3x3 stride-1 convolution with many channels (conv2_2 to conv5_3) runs as Winograd's F(2x2, 3x3)
  on the CPU (minifcn.winograd): 16 multiplications per 2x2 outputs and channel pair instead of 36.
- on a GPU, a band's im2col is one CUDA kernel, and its col2im a gather, one thread per input pixel with no
  atomic additions (minifcn.gpu_kernels); the tap loops below would launch KH*KW kernels each.
- max pooling 2x2 / stride 2 (every pool of VGG16) is a reshape: the four taps are four views, and
  at inference the winners (which tap won, for backward) are not computed at all.
- ReLU after a convolution may overwrite the convolution's output (nobody else reads it) and keep
  that output as its cache instead of a mask: one pass and no new memory.
- the bilinear upsampling maps each class channel to itself only, by a kernel that is a ramp times a
  ramp: one kernel per class, not a classes x classes matrix of them (mostly zeros), and each channel's
  upsampling is two small matrix products, out = Ay @ x @ Ax^T (no columns); while it is frozen it needs
  no weight gradient, so its backward is dx = Ay^T @ dout @ Ax. The rows of Ay and Ax are output pixels,
  so FCN's last upsampling computes only the window that the crop after it keeps
  (conv_transpose2d_window_forward).
- freed memory stays in the process for the next array (keep_freed_memory, below), instead of going
  back to the operating system after every layer.

Every function here has the signature of its plain twin in minifcn.ops and returns the same cache,
so a forward of one kind pairs with a backward of the other; tests/test_fast.py holds each to its
twin. The one pair without a twin, conv_transpose2d_window_forward/backward, stands for two plain ops,
the transposed convolution and the crop after it; layers.ConvTranspose2d builds the same cache on its
plain path, so there too either forward pairs with either backward. Switch them all off to see (and
time) the plain ops:

    import minifcn.fast
    minifcn.fast.ENABLED = False          # or: with minifcn.fast.disabled(): ...

The student package of minifcn.assignments leaves this file out, so there every layer runs the
student's own ops.
"""
from contextlib import contextmanager

from . import ops
from .ops.conv import check_conv2d
from .ops.fuse import check_crop
from .backend import check_inputs, is_cupy, pair, xp_of
from .im2col import _geometry, _is_pointwise
from . import gpu_kernels, winograd

ENABLED = True       # the layers take these fast paths (False: minifcn.ops' plain ones; see disabled())
PLATEAU = True       # VGG16's first stages leave out most of conv1_1's 100-pixel pad (minifcn.plateau)
BLOCK = 1 << 21      # floats in one band of columns (8 MiB in float32): fits a last-level cache, and is
                     # wide enough for BLAS to run at full speed
GPU_BLOCK = 1 << 26  # on a GPU: bands of 256 MiB (float32), few enough to keep kernel launches rare
CUDA_KERNELS = True  # on a GPU, a band's im2col and col2im are one CUDA kernel each (minifcn.gpu_kernels)
WINOGRAD_MIN_CHANNELS = 128   # 3x3 stride-1 convolutions with this many input channels use minifcn.winograd
                              # on the CPU: 0.62-0.85x of im2col's time at C = 256..512, 0.83-0.97x at 128,
                              # 1.18-1.22x at 64 (benchmarks/RESULTS.md, "Winograd F(2x2, 3x3) against
                              # banded im2col"); None: never


def keep_freed_memory():
    """Ask glibc's malloc (Linux) to keep freed memory for the next allocation; returns True if it agreed.

    By default every array over 32 MiB is mapped fresh from the operating system and handed back when
    freed, and the system zeroes each 4 KiB page again on first touch: a training step of FCN-8s at
    500x500 allocates gigabytes that way, and on a small machine the page faults cost as much as the
    arithmetic. With mmap off and trimming off, freed blocks stay in the process and are reused
    (the process keeps its peak size, as a framework's caching allocator does). Elsewhere: a no-op.
    """
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
        return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


keep_freed_memory()      # once, when minifcn.fast is first imported (by minifcn.layers): for the whole process


@contextmanager
def disabled():
    """Run the plain ops inside the block (for lessons and comparisons), then restore the switch."""
    global ENABLED
    before, ENABLED = ENABLED, False
    try:
        yield
    finally:
        ENABLED = before


# ----------------------------------------------------------------------------- conv2d in bands of rows

def _setup(x_shape, W, stride, pad, dilation):
    """What both passes of conv2d need to know, from the shapes alone (and the plain op's checks):
    (N, C, H, W, ph, pw, OH, OW), g (see the legend), and whether the convolution is pointwise (1x1, stride 1,
    no pad: then x itself is the column matrix)."""
    N, C, H, W_, KH, KW, sh, sw, ph, pw, dh, dw, OH, OW = _geometry(x_shape, W.shape[2:], stride, pad, dilation,
                                                                    "conv2d")
    return (N, C, H, W_, ph, pw, OH, OW), (KH, KW, sh, sw, dh, dw, OW), _is_pointwise(KH, KW, sh, sw, ph, pw)


def _block(xp):
    """Floats in one band: BLOCK on the CPU, GPU_BLOCK on a GPU."""
    return BLOCK if xp.__name__ == "numpy" else GPU_BLOCK


def _bands(OH, OW, K, F, block=None):
    """[(r0, r)]: bands of r output rows whose columns (K, r*OW) hold about `block` floats (BLOCK), and
    at least F columns, so that a band's share of dW (F, K) is never larger than the band itself (fc6).
    Every band has the same r but the last, which may be shorter."""
    rows = max(1, min(OH, max((block or BLOCK) // (K * OW), -(-F // OW))))    # -(-F // OW): ceil(F / OW)
    return [(r0, min(rows, OH - r0)) for r0 in range(0, OH, rows)]


def _padded_bands(x, F, K, OH, OW, ph, pw):
    """What both passes need for the bands: x padded (N, C, Hp, Wp), the bands [(r0, r)], and one flat buffer
    long enough for the largest band's columns (K * r * OW floats), reused by every band."""
    xp = xp_of(x)
    x_pad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    bands = _bands(OH, OW, K, F, _block(xp))
    return x_pad, bands, xp.empty(K * bands[0][1] * OW, dtype=x.dtype)


def _cuda_kernels(a):
    """Use minifcn.gpu_kernels for this array: on a GPU, with CUDA_KERNELS on (a type check: this runs per band)."""
    return CUDA_KERNELS and is_cupy(a)


def _band_cols(x_pad, buf, r0, r, g):
    """im2col of output rows [r0, r0 + r) of one padded image x_pad (C, Hp, Wp) -> (K, r*OW), a view of buf.
    Row c*KH*KW + i*KW + j, column oy*OW + ox, as minifcn.im2col's (oy counted from r0)."""
    KH, KW, sh, sw, dh, dw, OW = g
    C = x_pad.shape[0]
    cols = buf[:C * KH * KW * r * OW]
    flat = cols.reshape(C * KH * KW, r * OW)
    if _cuda_kernels(x_pad) and gpu_kernels.band_cols(x_pad, flat, r0, r, g):
        return flat
    cols = cols.reshape(C, KH, KW, r, OW)
    for i in range(KH):
        for j in range(KW):
            y0, x0 = r0 * sh + i * dh, j * dw               # the padded pixel that tap (i, j) of (r0, 0) reads
            cols[:, i, j] = x_pad[:, y0:y0 + sh * (r - 1) + 1:sh, x0:x0 + sw * (OW - 1) + 1:sw]
    return cols.reshape(C * KH * KW, r * OW)


def _band_col2im(dcols, dx_pad, r0, r, g):
    """The adjoint of _band_cols: add dcols (K, r*OW) back onto the padded image gradient dx_pad (C, Hp, Wp)."""
    KH, KW, sh, sw, dh, dw, OW = g
    C = dx_pad.shape[0]
    if _cuda_kernels(dx_pad) and gpu_kernels.band_col2im(dcols, dx_pad, r0, r, g):
        return
    dcols = dcols.reshape(C, KH, KW, r, OW)
    for i in range(KH):
        for j in range(KW):
            y0, x0 = r0 * sh + i * dh, j * dw
            dx_pad[:, y0:y0 + sh * (r - 1) + 1:sh, x0:x0 + sw * (OW - 1) + 1:sw] += dcols[:, i, j]


def _winograd_pays(xp, C, g):
    """3x3, stride 1, no dilation, at least WINOGRAD_MIN_CHANNELS input channels, on the CPU."""
    KH, KW, sh, sw, dh, dw, _ = g
    return (WINOGRAD_MIN_CHANNELS is not None and C >= WINOGRAD_MIN_CHANNELS and xp.__name__ == "numpy"
            and (KH, KW, sh, sw, dh, dw) == (3, 3, 1, 1, 1, 1))


def conv2d_forward(x, W, b=None, stride=1, pad=0, dilation=1):
    """ops.conv2d_forward, band by band: x (N, C, H, W), W (F, C, KH, KW) -> out (N, F, OH, OW), cache.
    One of three ways: Winograd (wide 3x3 stride-1 layers, CPU), one matrix product per image (1x1), bands."""
    xp = check_conv2d(x, W, b)
    (N, C, H, W_, ph, pw, OH, OW), g, pointwise = _setup(x.shape, W, stride, pad, dilation)
    F = W.shape[0]
    W2 = W.reshape(F, -1)                                                   # (F, K)
    if _winograd_pays(xp, C, g):
        out = winograd.conv3x3(x, W, (ph, pw))
    elif pointwise:
        out = xp.empty((N, F, OH, OW), dtype=x.dtype)
        for n in range(N):
            xp.matmul(W2, x[n].reshape(C, H * W_), out=out[n].reshape(F, OH * OW))
    else:
        out = xp.empty((N, F, OH, OW), dtype=x.dtype)
        x_pad, bands, buf = _padded_bands(x, F, W2.shape[1], OH, OW, ph, pw)
        for n in range(N):
            for r0, r in bands:
                cols = _band_cols(x_pad[n], buf, r0, r, g)                  # (K, r*OW)
                # out[n, :, r0:r0 + r] is (F, r, OW) with each filter's r*OW values contiguous, so the
                # reshape is a view and the product lands in out (CuPy: through a copy)
                xp.matmul(W2, cols, out=out[n, :, r0:r0 + r].reshape(F, r * OW))
    if b is not None:
        out += b.reshape(1, F, 1, 1)
    return out, (x, W, b is not None, stride, pad, dilation)


def _full_convolution_gives_dx(g, ph, pw, F, C):
    """Whether conv2d_backward takes dx by _dx_by_full_convolution: stride 1, no dilation, and pad <= kernel - 1
    (the full convolution pads dout by KH - 1 - ph, which must not be negative; every 3x3 pad-1 layer of
    VGG16 qualifies), and no more channels to gather than col2im (F <= C)."""
    KH, KW, sh, sw, dh, dw, _ = g
    return (sh, sw, dh, dw) == (1, 1, 1, 1) and ph <= KH - 1 and pw <= KW - 1 and F <= C


def _dx_by_full_convolution(dout, W, ph, pw):
    """dx of a stride-1 convolution as a convolution itself: dout (N, F, OH, OW) convolved with the kernel
    turned by 180 degrees and its F and C swapped, W' (C, F, KH, KW), padded by KH - 1 - ph -> (N, C, H, W).

    Input pixel (y, x) fed output pixel (y - i + ph, x - j + pw) through tap (i, j), so it collects
    dout there times W[:, :, i, j]: a convolution of dout with the flipped kernel. It replaces the
    col2im's KH*KW read-add-write passes over dx with the forward pass's band-by-band im2col (or
    Winograd, where dout has enough channels). Its columns have F*KH*KW rows where col2im's have
    C*KH*KW, so it pays where F <= C (conv1_2, conv2_2, ...; not conv2_1, which doubles the channels).
    """
    KH, KW = W.shape[2:]
    flipped = xp_of(W).ascontiguousarray(W[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))   # (C, F, KH, KW)
    return conv2d_forward(dout, flipped, None, 1, (KH - 1 - ph, KW - 1 - pw))[0]


def _add(total, term):
    """total + term, in place after the first term (fc6's dW is 411 MB: no zeros to start from)."""
    if total is None:
        return term
    total += term
    return total


def conv2d_backward(dout, cache, input_grad=True):
    """ops.conv2d_backward, band by band: dout (N, F, OH, OW) -> dx (N, C, H, W), dW (F, C, KH, KW), db (F,).

    dW is summed band by band (and image by image). dx comes one of two ways: as a convolution of dout,
    after the loop (_full_convolution_gives_dx), or inside the loop, onto a padded dx: col2im of each band's
    dcols, or for a 1x1 convolution the product W2.T @ dout itself.
    input_grad=False skips dx (returns None): the first layer's input is the image, which needs none.
    """
    x, W, has_bias, stride, pad, dilation = cache
    xp = check_inputs("conv2d_backward", dout=dout, W=W)
    (N, C, H, W_, ph, pw, OH, OW), g, pointwise = _setup(x.shape, W, stride, pad, dilation)
    F = W.shape[0]
    W2 = W.reshape(F, -1)                                                   # (F, K)
    dW = None                                                               # (F, K), summed over images and bands
    dx_by_convolution = input_grad and not pointwise and _full_convolution_gives_dx(g, ph, pw, F, C)
    dx_in_loop = input_grad and not dx_by_convolution
    dx_pad = xp.zeros((N, C, H + 2 * ph, W_ + 2 * pw), dtype=dout.dtype) if dx_in_loop else None
    if pointwise:
        for n in range(N):
            d, x2 = dout[n].reshape(F, OH * OW), x[n].reshape(C, H * W_)    # (F, P), (C, P): P = H*W = OH*OW
            dW = _add(dW, d @ x2.T)
            if dx_in_loop:
                xp.matmul(W2.T, d, out=dx_pad[n].reshape(C, H * W_))         # no pad: dx_pad is dx
    else:
        x_pad, bands, buf = _padded_bands(x, F, W2.shape[1], OH, OW, ph, pw)
        dbuf = xp.empty_like(buf)                                           # the band's dcols
        for n in range(N):
            for r0, r in bands:
                cols = _band_cols(x_pad[n], buf, r0, r, g)                  # (K, r*OW)
                d = dout[n, :, r0:r0 + r].reshape(F, r * OW)                # (F, r*OW)
                dW = _add(dW, d @ cols.T)
                if dx_in_loop:
                    dcols = xp.matmul(W2.T, d, out=dbuf[:cols.size].reshape(cols.shape))   # (K, r*OW)
                    _band_col2im(dcols, dx_pad[n], r0, r, g)
    if dx_by_convolution:
        dx = _dx_by_full_convolution(dout, W, ph, pw)
    else:
        dx = dx_pad[:, :, ph:ph + H, pw:pw + W_] if dx_in_loop else None
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dW.reshape(W.shape), db


# ----------------------------------------------------------------------------- transposed conv, kernel = m * stride
#
# Here C_in x H x W is the transposed convolution's input, C_out x OH x OW its output, and
# tiling = (KH, KW, sh, sw, ph, pw) for a kernel of m x m' tiles of the stride's size (KH = m*sh, KW = m'*sw).
# Three ways, the cheapest that applies: a channel-diagonal separable kernel (the bilinear upsampling): two
# small matrix products per channel; any kernel that is a multiple of the stride: col2im by tiles; else the
# plain op.

def _tiled(kernel, stride, pad):
    """tiling (KH, KW, sh, sw, ph, pw) when each kernel side is a multiple of its stride (all FCN upsampling:
    k4/s2, k16/s8, k32/s16, k64/s32), else None."""
    (KH, KW), (sh, sw), (ph, pw) = pair(kernel), pair(stride), pair(pad)
    return (KH, KW, sh, sw, ph, pw) if KH % sh == 0 and KW % sw == 0 else None


def _col2im_tiled(cols, out_shape, tiling):
    """col2im for a kernel of m x m' stride-sized tiles: cols (N, C*KH*KW, H*W) -> (N, C, OH, OW).

    Kernel tap (a*sh + u, b*sw + v) of input pixel (y, x) lands on output pixel ((y + a)*sh + u, (x + b)*sw + v)
    (before the pad is cut off): for one tile (a, b), its sh x sw taps of all input pixels fill a (H*sh, W*sw)
    picture (a pixel shuffle), which is added at offset (a*sh, b*sw). m*m' additions instead of KH*KW.
    """
    KH, KW, sh, sw, ph, pw = tiling
    N, C, OH, OW = out_shape
    H, W = (OH + 2 * ph - KH) // sh + 1, (OW + 2 * pw - KW) // sw + 1
    xp = xp_of(cols)
    cols = cols.reshape(N, C, KH, KW, H, W)
    full = xp.zeros((N, C, (H - 1) * sh + KH, (W - 1) * sw + KW), dtype=cols.dtype)   # the output before the crop
    for a in range(KH // sh):
        for b in range(KW // sw):
            tile = cols[:, :, a * sh:(a + 1) * sh, b * sw:(b + 1) * sw]              # (N, C, sh, sw, H, W)
            picture = tile.transpose(0, 1, 4, 2, 5, 3).reshape(N, C, H * sh, W * sw)
            full[:, :, a * sh:a * sh + H * sh, b * sw:b * sw + W * sw] += picture
    return full[:, :, ph:ph + OH, pw:pw + OW]


def _im2col_tiled(x, tiling):
    """The adjoint of _col2im_tiled (im2col with kernel KH x KW, stride s, pad p): (N, C, OH, OW) -> (N, C*KH*KW, H*W).
    Here x is the gradient of the transposed convolution's output and H x W the size of its input."""
    KH, KW, sh, sw, ph, pw = tiling
    N, C, OH, OW = x.shape
    H, W = (OH + 2 * ph - KH) // sh + 1, (OW + 2 * pw - KW) // sw + 1
    xp = xp_of(x)
    full = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    cols = xp.empty((N, C, KH, KW, H, W), dtype=x.dtype)
    for a in range(KH // sh):
        for b in range(KW // sw):
            picture = full[:, :, a * sh:a * sh + H * sh, b * sw:b * sw + W * sw]     # (N, C, H*sh, W*sw)
            tile = picture.reshape(N, C, H, sh, W, sw).transpose(0, 1, 3, 5, 2, 4)  # (N, C, sh, sw, H, W)
            cols[:, :, a * sh:(a + 1) * sh, b * sw:(b + 1) * sw] = tile
    return cols.reshape(N, C * KH * KW, H * W)


def _diagonal(W):
    """W (C, C, KH, KW) -> (its channel-diagonal kernels W[c, c] (C, KH, KW), whether W holds nothing off that
    diagonal), or None where W is not square in its channels or has one channel (then there is nothing to gain).
    On a GPU the second is a 0-d device array (a bool on NumPy): callers fold it into their own test, so that the
    GPU is asked once per decision (each question is a wait)."""
    C_in, C_out = W.shape[:2]
    if C_in != C_out or C_in == 1:
        return None
    xp = xp_of(W)
    kernels = W[xp.arange(C_in), xp.arange(C_in)]                          # (C, KH, KW)
    return kernels, xp.count_nonzero(W) == xp.count_nonzero(kernels)


def _channel_diagonal(W):
    """W (C, C, KH, KW) that only maps channel c to channel c (the bilinear upsampling) -> its kernels
    (C, KH, KW); any other W -> None. Such a layer upsamples each channel on its own."""
    diagonal = _diagonal(W)
    return diagonal[0] if diagonal is not None and bool(diagonal[1]) else None


def _separable(W):
    """W (C, C, KH, KW) that maps channel c to channel c only, by a kernel that is an outer product u[c] v[c]^T
    (the bilinear kernel is: a ramp down the rows times a ramp along the columns) -> (u (C, KH), v (C, KW));
    any other W -> None. All three conditions are one test on the device, read once (bool(ok)): on a GPU this
    check runs at every call of the upsampling, forward and backward.

    A rank-1 kernel is the outer product of its column and its row through any nonzero tap, divided by that
    tap; the largest tap is taken (nonzero unless the kernel is), and the product is compared with the kernel."""
    diagonal = _diagonal(W)
    if diagonal is None:
        return None
    kernels, only_diagonal = diagonal
    xp = xp_of(W)
    C, KH, KW = kernels.shape
    peak = xp.abs(kernels).reshape(C, -1).argmax(axis=1)                      # each kernel's largest tap (i, j)
    c, i, j = xp.arange(C), peak // KW, peak % KW
    top = kernels[c, i, j]                                                    # (C,)
    u, v = kernels[c, :, j], kernels[c, i, :] / xp.where(top != 0, top, 1)[:, None]   # column and row through it
    ok = only_diagonal & xp.all(top != 0) & xp.allclose(u[:, :, None] * v[:, None, :], kernels, rtol=1e-5, atol=0)
    return (u, v) if bool(ok) else None


def _interpolation(taps, n, stride, pad, start, length):
    """One axis of a per-channel transposed convolution as a matrix: taps (C, k) along an axis of n input pixels
    -> (C, length, n) for output pixels start .. start + length - 1: entry [c, o, i] is the tap that input pixel
    i stamps on output pixel start + o, taps[c, start + o + pad - i*stride], or 0 where that is off the kernel."""
    xp = xp_of(taps)
    k = (xp.arange(start, start + length) + pad)[:, None] - stride * xp.arange(n)[None, :]   # (length, n) tap index
    inside = (k >= 0) & (k < taps.shape[1])
    return taps[:, xp.clip(k, 0, taps.shape[1] - 1)] * inside


def _upsampling_matrices(uv, x_shape, stride, pad, window):
    """(Ay (C, h, H), Ax (C, w, W)) for the window ((oy, ox), (h, w)) of the output: a separable per-channel
    transposed convolution is out[n, c] = Ay[c] @ x[n, c] @ Ax[c]^T, and its input gradient is
    dx[n, c] = Ay[c]^T @ dout[n, c] @ Ax[c]."""
    (sh, sw), (ph, pw), ((oy, ox), (h, w)) = pair(stride), pair(pad), window
    return (_interpolation(uv[0], x_shape[2], sh, ph, oy, h),
            _interpolation(uv[1], x_shape[3], sw, pw, ox, w))


def _upsample_separable(x, mats):
    """x (N, C, H, W) -> Ay @ x @ Ax^T (N, C, h, w): two small matrix products per channel, no columns."""
    Ay, Ax = mats
    xp = xp_of(x)
    return xp.matmul(xp.matmul(Ay, x), Ax.transpose(0, 2, 1))


def _upsample_separable_backward(dout, mats):
    """dout (N, C, h, w) -> dx = Ay^T @ dout @ Ax (N, C, H, W): the adjoint of _upsample_separable."""
    Ay, Ax = mats
    xp = xp_of(dout)
    return xp.matmul(xp.matmul(Ay.transpose(0, 2, 1), dout), Ax)


def conv_transpose2d_output_shape(x_shape, W_shape, stride, pad):
    """(N, C_out, OH, OW) of a transposed convolution of x (N, C_in, H, W) with W (C_in, C_out, KH, KW)."""
    (sh, sw), (ph, pw) = pair(stride), pair(pad)
    return (x_shape[0], W_shape[1], ops.conv_transpose2d_output_size(x_shape[2], W_shape[2], sh, ph),
            ops.conv_transpose2d_output_size(x_shape[3], W_shape[3], sw, pw))


def _fast_path_takes(x, W, b, tiling):
    """Whether the fast forward may run: a tiled kernel, and inputs the plain op would accept (x (N, C_in, H, W)
    with W's C_in, b (C_out,) or None, an output of at least one pixel). Where not, the plain op runs instead,
    and its checks explain what is wrong. Wrong devices or dtypes are raised here, with the plain op's words."""
    if tiling is None or getattr(x, "ndim", 0) != 4 or x.shape[1] != W.shape[0]:
        return False
    check_inputs("conv_transpose2d", x=x, W=W, b=b)
    _, C_out, OH, OW = conv_transpose2d_output_shape(x.shape, W.shape, tiling[2:4], tiling[4:6])
    return OH >= 1 and OW >= 1 and (b is None or b.shape == (C_out,))


def _transposed_forward(x, W, b, stride, pad, window):
    """The forward of conv_transpose2d_forward and conv_transpose2d_window_forward: -> (out, cache, mats).
    window None: the whole output (N, C_out, OH, OW); else ((oy, ox), (h, w)): only that window of it,
    (N, C_out, h, w). cache: ops.conv_transpose2d_forward's; mats: the separable path's (Ay, Ax), or None."""
    tiling = _tiled(W.shape[2:], stride, pad) if getattr(W, "ndim", 0) == 4 else None
    if not _fast_path_takes(x, W, b, tiling):
        out, cache = ops.conv_transpose2d_forward(x, W, b, stride, pad)
        return out if window is None else ops.crop_forward(out, *window)[0], cache, None
    xp = xp_of(x)
    N, C_out, OH, OW = conv_transpose2d_output_shape(x.shape, W.shape, stride, pad)
    uv = _separable(W)                                                    # (u, v) or None
    if uv is not None:                                                    # each channel on its own, two products
        oy, ox, h, w = check_crop((N, C_out, OH, OW), *window) if window else (0, 0, OH, OW)   # the crop's check
        mats = _upsampling_matrices(uv, x.shape, stride, pad, ((oy, ox), (h, w)))
        out = _upsample_separable(x, mats)                                # (N, C_out, h, w)
    else:
        mats = None
        N, C_in, H, W_ = x.shape
        cols = xp.matmul(W.reshape(C_in, -1).T, x.reshape(N, C_in, H * W_))  # (N, C_out*KH*KW, H*W)
        out = _col2im_tiled(cols, (N, C_out, OH, OW), tiling)
        if window is not None:
            out = ops.crop_forward(out, *window)[0]
    if b is not None:
        out += b.reshape(1, C_out, 1, 1)
    return out, (x, W, b is not None, stride, pad), mats


def conv_transpose2d_forward(x, W, b=None, stride=1, pad=0):
    """ops.conv_transpose2d_forward: x (N, C_in, H, W), W (C_in, C_out, KH, KW) -> out (N, C_out, OH, OW), cache.
    For a kernel that is a multiple of the stride, col2im by tiles, and for the bilinear upsampling
    (channel-diagonal, separable kernels) two small matrix products per channel."""
    out, cache, _ = _transposed_forward(x, W, b, stride, pad, None)
    return out, cache


def conv_transpose2d_backward(dout, cache, weight_grad=True):
    """ops.conv_transpose2d_backward: dout (N, C_out, OH, OW) -> dx (N, C_in, H, W), dW (C_in, C_out, KH, KW), db.
    im2col by tiles where the kernel is a multiple of the stride; weight_grad=False skips dW (returns None):
    the frozen bilinear upsampling needs none, and then dx = Ay^T @ dout @ Ax."""
    x, W, has_bias, stride, pad = cache
    tiling = _tiled(W.shape[2:], stride, pad)
    if tiling is None:
        dx, dW, db = ops.conv_transpose2d_backward(dout, cache)
        return dx, dW if weight_grad else None, db
    xp = check_inputs("conv_transpose2d_backward", dout=dout, W=W)
    C_in, N = W.shape[0], x.shape[0]
    uv = None if weight_grad else _separable(W)
    if uv is not None:                                                    # frozen bilinear: no columns at all
        dx = _upsample_separable_backward(dout, _upsampling_matrices(uv, x.shape, stride, pad,
                                                                      ((0, 0), dout.shape[2:])))
        return dx, None, dout.sum(axis=(0, 2, 3)) if has_bias else None
    dcols = _im2col_tiled(dout, tiling)                                   # (N, C_out*KH*KW, H*W)
    diagonal = _channel_diagonal(W)
    if diagonal is not None:                                              # (C, 1, KH*KW) @ (N, C, KH*KW, H*W)
        dx = xp.matmul(diagonal.reshape(C_in, 1, -1), dcols.reshape(N, C_in, -1, dcols.shape[-1])).reshape(x.shape)
    else:
        dx = xp.matmul(W.reshape(C_in, -1), dcols).reshape(x.shape)       # (N, C_in, H, W)
    dW = None                                                             # (C_in, C_out*KH*KW), summed over images
    if weight_grad:
        for n in range(N):
            dW = _add(dW, x[n].reshape(C_in, -1) @ dcols[n].T)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, None if dW is None else dW.reshape(W.shape), db


def conv_transpose2d_window_forward(x, W, b, stride, pad, offset, size):
    """conv_transpose2d_forward followed by ops.crop_forward(out, offset, size), in one: out (N, C_out, h, w),
    cache = (conv_transpose2d's cache, the crop's cache, mats). FCN's last upsampling paints more than the
    image, (N, classes, 32h + 32, .) in FCN-32s and 32h + 56 rows in FCN-8s (h: fc7's height, as in
    minifcn.models.fcn), of which the crop keeps the image's H x W; for the bilinear upsampling only that
    window is computed (FCN-8s at 160x160: 160^2 of 248^2 pixels)."""
    out, cache, mats = _transposed_forward(x, W, b, stride, pad, (offset, size))
    full = conv_transpose2d_output_shape(x.shape, W.shape, stride, pad)
    return out, (cache, (full, *pair(offset)), mats)


def conv_transpose2d_window_backward(dout, cache, weight_grad=True):
    """The adjoint of conv_transpose2d_window_forward: dout (N, C_out, h, w) -> dx, dW (None if not
    weight_grad), db. Frozen and separable: straight from the window's gradient; else through the crop's
    backward (zeros around the window) and conv_transpose2d_backward."""
    full_cache, crop, mats = cache
    if mats is not None and not weight_grad:
        has_bias = full_cache[2]
        return _upsample_separable_backward(dout, mats), None, dout.sum(axis=(0, 2, 3)) if has_bias else None
    return conv_transpose2d_backward(ops.crop_backward(dout, crop), full_cache, weight_grad)


# ----------------------------------------------------------------------------- max pooling 2x2, stride 2

def _is_2x2(kernel, stride, pad):
    """VGG16's pooling: 2x2 windows, stride 2, no pad. Windows tile the map without overlap."""
    return pair(kernel) == (2, 2) and pair(stride) == (2, 2) and pair(pad) == (0, 0)


def max_pool2d_forward(x, kernel=2, stride=2, pad=0, train=True):
    """ops.max_pool2d_forward: x (N, C, H, W) -> out (N, C, OH, OW), cache. 2x2 windows at stride 2 by halves:
    the larger of each pair of rows, then of each pair of columns; other windows: the plain op.
    train=False skips the winners on the 2x2 path (the cache is None: there will be no backward)."""
    if not _is_2x2(kernel, stride, pad) or getattr(x, "ndim", 0) != 4:
        return ops.max_pool2d_forward(x, kernel, stride, pad)
    xp = check_inputs("max_pool2d", x=x)
    N, C, H, W = x.shape
    OH, OW = -(-H // 2), -(-W // 2)                                         # ceil: a last half window is kept
    if (H, W) != (2 * OH, 2 * OW):                                          # odd: pad with -inf, which never wins
        x = xp.pad(x, ((0, 0), (0, 0), (0, 2 * OH - H), (0, 2 * OW - W)), constant_values=-xp.inf)
    pairs = x.reshape(N, C, OH, 2, 2 * OW)                                  # rows 2i and 2i + 1, side by side
    rows = xp.maximum(pairs[:, :, :, 0], pairs[:, :, :, 1])                 # (N, C, OH, 2*OW), contiguous reads
    out = xp.maximum(rows[..., 0::2], rows[..., 1::2])                      # (N, C, OH, OW)
    if not train:
        return out, None
    a, b = pairs[:, :, :, 0, 0::2], pairs[:, :, :, 0, 1::2]                 # taps t = 0, 1 (top row), 2, 3 (bottom)
    c = pairs[:, :, :, 1, 0::2]                                             # (tap 3 is whatever is left)
    i8 = xp.int8                                                            # arg's dtype in the plain op too
    arg = xp.where(a == out, i8(0), xp.where(b == out, i8(1), xp.where(c == out, i8(2), i8(3))))   # the first max
    return out, ((N, C, H, W), arg, (2, 2, 2, 2, 0, 0))


def max_pool2d_backward(dout, cache):
    """ops.max_pool2d_backward: dout (N, C, OH, OW) -> dx (N, C, H, W). For 2x2 / stride 2 the windows do not
    overlap, so each tap is one assignment into a view of dx (N, C, OH, 2, OW, 2), no additions."""
    x_shape, arg, geometry = cache
    if geometry != (2, 2, 2, 2, 0, 0):
        return ops.max_pool2d_backward(dout, cache)
    xp = check_inputs("max_pool2d_backward", dout=dout)
    N, C, H, W = x_shape
    OH, OW = arg.shape[2:]
    dx = xp.empty((N, C, OH, 2, OW, 2), dtype=dout.dtype)
    for i in (0, 1):
        for j in (0, 1):
            dx[:, :, :, i, :, j] = xp.where(arg == 2 * i + j, dout, 0)
    return dx.reshape(N, C, 2 * OH, 2 * OW)[:, :, :H, :W]


# ----------------------------------------------------------------------------- ReLU in place

def relu_forward_inplace(x):
    """max(x, 0) written over x; the cache is that output (where it is > 0, so was x). Only for an x
    that nothing else reads, such as a convolution's fresh output. (ops.relu_forward's cache is the mask
    x > 0 instead; each backward reads either, as a ReLU's output is nonzero exactly where it is > 0.)"""
    xp = check_inputs("relu", x=x)
    xp.maximum(x, 0, out=x)
    return x, x


def relu_backward_inplace(dout, out):
    """dout where out > 0, else 0, written over dout (which the caller hands over)."""
    xp = xp_of(dout)
    xp.multiply(dout, out > 0, out=dout)
    return dout
