"""Winograd's minimal filtering F(2x2, 3x3): a 3x3 stride-1 convolution with 2.25x fewer multiplications.

Legend:  N batch, C input channels, H x W input, F filters, OH x OW output,
         TH x TW tiles of 2x2 output pixels, r tile rows in one band,
         g a 3x3 kernel, d a 4x4 tile of the padded input, U the transformed kernels, V the transformed
         tiles, M their products (each 16 numbers per tile: 4 x 4).

A 3x3 convolution computes each 2x2 block of output from a 4x4 block of input: 36 multiplications
per channel pair done directly (4 pixels x 9 taps). Winograd's trick (Lavin and Gray, "Fast
Algorithms for Convolutional Neural Networks", 2016) does it with 16:

    Y = A^T [ (G g G^T)  *  (B^T d B) ] A        g: 3x3 kernel, d: 4x4 input tile, *: elementwise

G g G^T turns the kernel into 4x4 numbers (once per call), B^T d B turns the tile into 4x4 numbers
(additions only), and A^T . A turns their product back into the 2x2 outputs (additions only). Over
C input channels the 16 elementwise products become 16 matrix products, (F, C) @ (C, tiles): the
same matrix products as im2col's, with 16 rows of taps per 4 pixels instead of 36. On the 2-core
machine of benchmarks/RESULTS.md the additions (NumPy, one core) cost less than the multiplications
they save once C >= 128 (conv2_2 onwards in VGG16; see fast.WINOGRAD_MIN_CHANNELS); with fewer
channels, im2col wins (so the tiny net, at most 32 channels a convolution, never comes here).

Everything is done in bands of tile rows (V or M, whichever is larger, holds about BLOCK floats), so
the transformed input and the products stay in cache between the steps. Additions run on whole arrays,
never per pixel: the tile's four columns are the even and odd columns of the padded input, kept apart
so that each column of a tile is a contiguous slice. Results agree with im2col's to float32 rounding
(the same sums, taken in another order through the transforms, so rounded differently).
"""
from .backend import xp_of

BLOCK = 1 << 21      # floats in one band of V (or of M, if F > C): 8 MiB in float32, as fast.BLOCK

# The matrices of F(2x2, 3x3) (Lavin and Gray, section 4.1), written out as additions below:
#   B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
#   G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
#   A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def transform_kernel(W):
    """W (F, C, 3, 3) -> U (16, F, C): U[4a + b] = (G g G^T)[a, b] for every filter and channel."""
    xp = xp_of(W)
    F, C = W.shape[:2]
    Gm = xp.asarray(G, dtype=W.dtype)                                      # (4, 3)
    U = xp.tensordot(Gm, W, axes=([1], [2]))                               # (4, F, C, 3): G g
    U = xp.tensordot(U, Gm, axes=([3], [1]))                               # (4, F, C, 4): G g G^T
    return xp.ascontiguousarray(U.transpose(0, 3, 1, 2)).reshape(16, F, C)


def _transform_input(d, V):
    """B^T d B for every tile of a band. d: the four tile rows, each (2, C, r, TW + 1) (even and odd
    columns of padded input rows 2t, 2t+1, 2t+2, 2t+3 for every tile row t of the band) -> written into
    V (4, 4, C, r, TW)."""
    xp = xp_of(V)
    rows = xp.empty((4,) + d[0].shape, dtype=V.dtype)                      # B^T d: (4, 2, C, r, TW + 1)
    xp.subtract(d[0], d[2], out=rows[0])
    xp.add(d[1], d[2], out=rows[1])
    xp.subtract(d[2], d[1], out=rows[2])
    xp.subtract(d[1], d[3], out=rows[3])
    for a in range(4):                                                     # (B^T d) B, column by column
        even, odd = rows[a, 0], rows[a, 1]                                 # (C, r, TW + 1)
        c0, c1, c2, c3 = even[..., :-1], odd[..., :-1], even[..., 1:], odd[..., 1:]   # tile columns 0..3
        xp.subtract(c0, c2, out=V[a, 0])
        xp.add(c1, c2, out=V[a, 1])
        xp.subtract(c2, c1, out=V[a, 2])
        xp.subtract(c1, c3, out=V[a, 3])


def _transform_output(M, out):
    """A^T M A for every tile of a band: M (4, 4, F, r, TW) -> the band's output out (F, r, 2, TW, 2),
    which is (F, 2r, 2TW) seen as rows and columns split into tile and position in the tile."""
    xp = xp_of(M)
    rows = xp.empty((2,) + M.shape[1:], dtype=M.dtype)                     # A^T M: (2, 4, F, r, TW)
    xp.add(M[0], M[1], out=rows[0])
    rows[0] += M[2]
    xp.subtract(M[1], M[2], out=rows[1])
    rows[1] -= M[3]
    for i in range(2):                                                     # (A^T M) A, straight into out
        m0, m1, m2, m3 = rows[i]
        xp.add(m0, m1, out=out[:, :, i, :, 0])
        out[:, :, i, :, 0] += m2
        xp.subtract(m1, m2, out=out[:, :, i, :, 1])
        out[:, :, i, :, 1] -= m3


def conv3x3(x, W, pad):
    """x (N, C, H, W), W (F, C, 3, 3), stride 1, pad (ph, pw) -> out (N, F, OH, OW), OH = H + 2*ph - 2,
    OW = W + 2*pw - 2. No bias: the caller (fast.conv2d_forward) adds it."""
    xp = xp_of(x)
    N, C, H, W_ = x.shape
    F = W.shape[0]
    ph, pw = pad
    OH, OW = H + 2 * ph - 2, W_ + 2 * pw - 2
    TH, TW = -(-OH // 2), -(-OW // 2)                                      # 2x2 tiles, the last ones cut
    # the padded input (2TH + 2 rows, 2TW + 2 columns) with its even and odd columns apart:
    # x_eo[n, p, c, y, k] = x_pad[n, c, y, 2k + p], so a tile's columns 2k, 2k+1, 2k+2, 2k+3 are four slices
    x_eo = xp.zeros((N, 2, C, 2 * TH + 2, TW + 1), dtype=x.dtype)
    for p in (0, 1):
        w0 = (p - pw) % 2                                                  # first input column of parity p
        cols = x[..., w0::2]
        x_eo[:, p, :, ph:ph + H, (w0 + pw) // 2:(w0 + pw) // 2 + cols.shape[-1]] = cols
    U = transform_kernel(W)                                                # (16, F, C)
    out = xp.empty((N, F, 2 * TH, 2 * TW), dtype=x.dtype)                 # whole tiles; cut to OH x OW at the end
    r_max = max(1, min(TH, BLOCK // (16 * max(C, F) * TW)))               # tile rows in a band
    V = xp.empty((16, C, r_max * TW), dtype=x.dtype)                      # reused by every band (the last one
    M = xp.empty((16, F, r_max * TW), dtype=x.dtype)                      # may use only part of them)
    for n in range(N):
        for t0 in range(0, TH, r_max):
            r = min(r_max, TH - t0)
            d = [x_eo[n, :, :, 2 * t0 + a:2 * t0 + a + 2 * r:2] for a in range(4)]   # 4 x (2, C, r, TW + 1)
            Vb, Mb = V[:, :, :r * TW], M[:, :, :r * TW]
            _transform_input(d, Vb.reshape(4, 4, C, r, TW))
            xp.matmul(U, Vb, out=Mb)                                       # 16 x (F, C) @ (C, r*TW)
            # the band's output rows, (F, 2r, 2TW) with each filter's rows contiguous: the reshape is a view
            _transform_output(Mb.reshape(4, 4, F, r, TW), out[n, :, 2 * t0:2 * (t0 + r)].reshape(F, r, 2, TW, 2))
    if (OH, OW) != (2 * TH, 2 * TW):                                       # odd sizes: drop the cut tiles' extra
        out = xp.ascontiguousarray(out[:, :, :OH, :OW])
    return out
