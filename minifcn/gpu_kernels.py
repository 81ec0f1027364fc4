"""Two CUDA kernels for the convolution's bands on the GPU: im2col in one launch, and col2im as a gather.

Legend:  C channels, Hp x Wp the padded input of one image, KH x KW kernel, sh x sw stride, dh x dw dilation,
         R output rows in the band (starting at output row r0; minifcn.fast's r), OW output columns,
         K = C*KH*KW; g = (KH, KW, sh, sw, dh, dw, OW) as in minifcn.fast.

minifcn.fast builds a band's columns with one strided copy per kernel tap and adds them back with one
read-add-write of the input gradient per tap. That runs on CuPy as it is, but costs KH*KW kernel launches per
band and, for col2im, KH*KW passes over the gradient. Here each is one launch, written as a CuPy
ElementwiseKernel: a loop body in C, run once per element of its output, with `i` the element's index.

- im2col: one thread per column entry reads the pixel under it. Its flat index i is taken apart into
  (c, ki, kj, oy, ox), the loop variables of minifcn.im2col's naive loop, one line per variable.
- col2im as a gather: one thread per input pixel sums the column entries that read it. Each pixel is written
  by its own thread only, so there are no atomic additions and the sum always runs in the same order: the
  result is the same from run to run (a scatter with atomicAdd would add in whatever order threads arrive).

The bodies are plain C, so tests/test_gpu_kernels.py compiles them with the system C compiler into a loop over
`i` and holds them to minifcn.fast's tap loops on the CPU; on a GPU, `pytest -m gpu` does the same with CuPy.
Switch them off (minifcn.fast.CUDA_KERNELS = False) to run the tap loops on the GPU; where a kernel does not
compile, the tap loops take over by themselves, with a warning.
"""
import warnings

# (inputs, outputs, body) of each cupy.ElementwiseKernel. `raw` arrays are indexed by hand (flat, C order);
# the output is indexed by the thread's `i` (CuPy follows the output's strides, so it may be a view).
# Flat indices into the inputs are computed in long long: a 32-bit int would overflow past 2^31 entries.

IM2COL = (
    "raw T x_pad, int32 Hp, int32 Wp, int32 r0, int32 R, int32 OW, "
    "int32 KH, int32 KW, int32 sh, int32 sw, int32 dh, int32 dw",
    "T cols",
    """
    // i -> (c, ki, kj, oy, ox) of cols (C, KH, KW, R, OW)
    int ox = i % OW;
    int t = i / OW;
    int oy = t % R;   t /= R;
    int kj = t % KW;  t /= KW;
    int ki = t % KH;
    int c = t / KH;
    int y = (r0 + oy) * sh + ki * dh;           // the padded input pixel that tap (ki, kj) of (r0 + oy, ox) reads
    int x = ox * sw + kj * dw;
    cols = x_pad[((long long)c * Hp + y) * Wp + x];
    """,
)

COL2IM_GATHER = (
    "raw T dcols, int32 rows, int32 Wp, int32 R, int32 OW, "
    "int32 KH, int32 KW, int32 sh, int32 sw, int32 dh, int32 dw",
    "T dx",
    """
    // i -> (c, y, x) of dx (C, rows, Wp): the padded gradient's rows that the band's taps reach,
    // y counted from padded row r0*sh (the first row the band's first output row reads)
    int x = i % Wp;
    int t = i / Wp;
    int y = t % rows;
    int c = t / rows;
    T sum = 0;
    for (int ki = 0; ki < KH; ki++) {
        int u = y - ki * dh;                    // = oy*sh if tap ki of output row oy read this row
        if (u < 0 || u % sh != 0 || u / sh >= R) continue;
        for (int kj = 0; kj < KW; kj++) {
            int v = x - kj * dw;                // = ox*sw if tap kj of output column ox read this column
            if (v < 0 || v % sw != 0 || v / sw >= OW) continue;
            sum += dcols[((((long long)c * KH + ki) * KW + kj) * R + u / sh) * OW + v / sw];
        }
    }
    dx += sum;                                  // one thread per pixel: no atomics, a fixed order
    """,
)

_compiled = {}      # (name, dtype) -> the kernel, or None when it did not compile here


def _kernel(spec, name):
    """The cupy.ElementwiseKernel for spec (CuPy compiles it at its first launch for each dtype, cached on disk).
    tests/test_gpu_kernels.py swaps this function for one that compiles the body in C for NumPy arrays."""
    import cupy
    return cupy.ElementwiseKernel(*spec, name=name)


def _launch(spec, name, *args):
    """Run one kernel (its output is the last argument) -> True; False when it does not compile for this dtype
    on this machine: the caller then runs the tap loops.

    Should the compiler refuse a body (on a CUDA or CuPy version it was never tried on), training should not
    stop: the tap loops compute the same numbers, only slower. So a compile error is reported once per kernel
    and dtype, as a warning, and not tried again. Any other error (out of memory, a bad argument) is raised.
    """
    key = (name, str(args[-1].dtype))
    if key not in _compiled:
        kernel = _kernel(spec, name)
        try:
            kernel(*args)
        except Exception as e:
            if type(e).__name__ != "CompileException":     # cupy.cuda.compiler's (CuPy need not be imported here)
                raise
            _compiled[key] = None
            warnings.warn(f"minifcn: the CUDA kernel {name} did not compile for {key[1]} ({str(e).strip()[:300]}); "
                          "the convolutions use the tap loops instead (same results, slower). Please report it "
                          "with your CuPy and CUDA versions.", RuntimeWarning)
            return False
        _compiled[key] = kernel
        return True
    if _compiled[key] is None:
        return False
    _compiled[key](*args)
    return True


def band_cols(x_pad, cols, r0, r, g):
    """im2col of output rows [r0, r0 + r) of one padded image x_pad (C, Hp, Wp) into cols (K, r*OW) (CuPy)
    -> True, or False (cols untouched) where the kernel does not compile. minifcn.fast._band_cols's twin."""
    KH, KW, sh, sw, dh, dw, OW = g
    Hp, Wp = x_pad.shape[1:]
    return _launch(IM2COL, "minifcn_im2col", x_pad, Hp, Wp, r0, r, OW, KH, KW, sh, sw, dh, dw, cols)


def band_col2im(dcols, dx_pad, r0, r, g):
    """The adjoint of band_cols: add dcols (K, r*OW) onto dx_pad (C, Hp, Wp), one thread per pixel (CuPy)
    -> True, or False (dx_pad untouched) where the kernel does not compile. minifcn.fast._band_col2im's twin."""
    KH, KW, sh, sw, dh, dw, OW = g
    # One thread per pixel that the band's columns can touch: the padded rows from the first one its first output
    # row reads (y0) to the last one its last output row reads through the bottom kernel tap.
    y0 = r0 * sh
    rows = (r - 1) * sh + (KH - 1) * dh + 1
    return _launch(COL2IM_GATHER, "minifcn_col2im", dcols, rows, dx_pad.shape[2], r, OW, KH, KW, sh, sw, dh, dw,
                   dx_pad[:, y0:y0 + rows])
