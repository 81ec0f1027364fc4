"""The pad-100 plateau: VGG16's first stages run on smaller maps, with exactly the same results.

Legend:  N batch, C channels, H x W a map; along one axis: n rows (the same words serve the columns),
         a "band": a run of equal rows (not minifcn.fast's bands of output rows), k rows of each band left out,
         a signature: a number naming what a row holds (below), a stage: the layers after one pool up to
         and including the next (the first stage starts at conv1_1).

conv1_1 pads the image by 100 pixels so that any image reaches fc7 (DESIGN.md). A 160 x 160 image is
padded to 360 x 360, and conv1_1 to pool3 spend most of their work far from the image, on windows that
see no image pixel (only zeros, or what the layers above made of zeros). There every row of a map is equal to the next one: the map has a band of equal rows
above the image and one below it (and two bands of equal columns, left and right). A convolution or a
pooling of a band is again a band, a little shorter, so the body can leave part of each band out, run
on the smaller map, and put copies of a band row back later: every number that remains is the number
the full map holds there, whatever the image and the weights.

How a plan is found, per axis (rows and columns are planned apart, and combine: a value depends on its
row's and its column's window only). Every row gets a signature, a number naming what it holds: each
image row its own, the padding rows of a layer their layer's, and an output row the signatures of the
rows its window reads. Two rows with one signature hold equal numbers, for any image and any weights.
The full net's signatures come first; then, stage by stage (a stage ends at a pool), the plan leaves
the largest even number k of rows out of each band of the stage's input such that the stage's output
is the full output less k / 2 rows of each band: checked signature by signature, not derived by hand.
Even, so that every pooling window still pairs the rows it pairs in the full map. At each pool a
gather (the pieces below) puts rows back or leaves more out for the next stage, and at the last pool
of the plan (pool3 for the paper's nets, the first map their heads read; an earlier tapped pool for a
head that reads one, see VGG16.plateau_end) the map is whole again.

    plan = plan_body(specs, 160, 160)      # specs: conv1_1 .. pool3; conv1_1 pads by 8; pool1..pool3 gather
    y = gather_forward(x, plan.gathers["pool1"])          # x (N, C, 87, 87) -> y (N, C, 99, 99)
    dx = gather_backward(dy, plan.gathers["pool1"], x.shape)              # dy (N, C, 99, 99) -> dx like x

The plan's maps at 160 x 160: conv1 174^2 instead of 358^2, conv2 99^2 instead of 179^2, conv3 66^2
instead of 90^2. (pool1's gather puts rows back: conv1_1's stage can leave out all but one row of each of
pool1's bands, for its input's bands are conv1_1's own padding; but conv2_1 and conv2_2 each shorten a
band by a row at each end, so the next stage starts with that band row copied 6 more times.)

The gather's backward adds the gradient of every copy to the row it copied: the net computes the same
function of the weights, so backprop through the smaller maps gives the same gradients (summed in
another order, so equal to float rounding). VGG16 at 160 x 160 does 41% of conv1_1..conv3_3's full
multiply-adds, at 500 x 500 66% (the tiny net's channels: 39% and 64%; lesson 6 counts them from the plan).
minifcn.fast.PLATEAU switches it off.
"""
import bisect
from dataclasses import dataclass
from functools import lru_cache

from .backend import xp_of
from .ops.pool import pool_output_size


# ----------------------------------------------------------------------------- signatures, one axis

class Signatures:
    """Names for rows: equal names, equal rows. One table per plan, so that names compare."""

    def __init__(self):
        self.table = {}                  # what a row holds, as a tuple -> its signature (0, 1, 2, ...)

    def name(self, key):
        """The signature of `key` (a tuple), a new one the first time the key is seen."""
        return self.table.setdefault(key, len(self.table))

    def image(self, n, pad):
        """The padded input of the first layer: `pad` zero rows, n image rows, `pad` zero rows."""
        zero = self.name(("zero",))
        return [zero] * pad + [self.name(("image", i)) for i in range(n)] + [zero] * pad

    def run(self, rows, specs, padded=False):
        """rows (signatures) -> the signatures after each layer of `specs` (conv or pool): one list per layer.
        padded: the first layer's padding is already in `rows` (see image). An output row is named by its
        layer and the signatures of the rows its window reads: equal windows through one layer, equal rows."""
        out = []
        for i, spec in enumerate(specs):
            k, s, p = spec.kernel, spec.stride, 0 if i == 0 and padded else spec.pad
            if spec.kind == "conv":
                pad = self.name(("pad", spec.name))
                rows = [pad] * p + rows + [pad] * p
                n = (len(rows) - k) // s + 1
            elif spec.kind == "pool":                   # Caffe's ceil: the last window may run past the end,
                n = pool_output_size(len(rows), k, s, p)    # and is cut there (the slice below stops at the end)
                rows = [self.name(("-inf", spec.name))] * p + rows
            else:
                raise ValueError(f"plateau: {spec.name} is a {spec.kind}; a plan covers convolutions and pools only")
            rows = [self.name((spec.name,) + tuple(rows[j * s:j * s + k])) for j in range(n)]
            out.append(rows)
        return out


def bands(rows):
    """(start, stop) of the longest run of equal names in the first half of `rows`, and in the second: the
    padding's band above (left of) the image, and the one below (right of) it. (0, 0) where there is none."""
    runs, i = [], 0
    while i < len(rows):
        j = i
        while j < len(rows) and rows[j] == rows[i]:
            j += 1
        runs.append((i, j))
        i = j
    half = len(rows) / 2
    top = max((r for r in runs if r[1] <= half), key=lambda r: r[1] - r[0], default=(0, 0))
    bottom = max((r for r in runs if r[0] >= half), key=lambda r: r[1] - r[0], default=(0, 0))
    return top, bottom


def kept(rows, k):
    """The positions of `rows` that remain when k rows of both bands are left out (the first k of each);
    None if a band has k rows or fewer (it must keep one, to be copied back)."""
    (a, b), (c, d) = bands(rows)
    if k and (b - a <= k or d - c <= k):
        return None
    return list(range(a)) + list(range(a + k, c)) + list(range(c + k, len(rows)))


def pieces(full, k_in, k_out):
    """How to turn a map with k_in rows of each band left out into one with k_out left out, given the full
    map's signatures: a tuple of ("rows", start, stop) (input rows start..stop-1, once each) and
    ("copies", row, count) (input row `row`, count times), in output order; None if the two are the same map.
    Each output row is taken from the input row with its signature: itself, or a kept row of its band."""
    if k_in == k_out:
        return None
    have, want = kept(full, k_in), kept(full, k_out)         # positions in the full map
    out = []
    for p in want:
        j = bisect.bisect_left(have, p)            # input row j: p itself, or the band row kept just after p
        assert full[have[j]] == full[p], "plateau: a wanted row has no equal in the input"
        last = out[-1] if out else (None, None, None)
        if last[0] == "copies" and j == last[1]:
            out[-1] = ("copies", j, last[2] + 1)           # one more copy of row j
        elif last[0] == "rows" and j == last[2] - 1:
            out.append(("copies", j, 1))                   # row j again, just after the slice that ends at it
        elif last[0] == "rows" and j == last[2]:
            out[-1] = ("rows", last[1], j + 1)             # the next row of a slice
        else:
            out.append(("rows", j, j + 1))
    return tuple(out)


def _largest(ok, limit):
    """The largest even k in [0, limit] with ok(k), by bisection (ok(0) holds). Bisection assumes that ok
    holds up to some k and fails after it; were that ever not so, the k returned still passed ok (lo only
    moves to a k that passed), so a wrong guess would cost speed, never exactness."""
    lo, hi = 0, limit // 2                         # in units of 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(2 * mid) else (lo, mid - 1)
    return 2 * lo


@lru_cache(maxsize=1024)
def plan_axis(specs, n):
    """(conv1_1's shrunk pad, {pool name: pieces or None}) for an image of length n through `specs` (a tuple of
    geometry.Spec, conv1_1 .. the last pool of the plan; conv1_1's own pad makes the bands to shrink).
    Cached: the model asks at every forward, and the answer depends on the specs and n only."""
    sig = Signatures()
    pad = specs[0].pad
    full_in = sig.image(n, pad)                                     # conv1_1's padded input
    full = sig.run(full_in, specs, padded=True)                     # full[i]: the rows after specs[i]
    ends = [i for i, s in enumerate(specs) if s.kind == "pool"]     # stage i: specs[starts[i]] .. specs[ends[i]]
    starts = [0] + [e + 1 for e in ends[:-1]]
    first_pad, gathers, k_left = pad, {}, 0        # k_left: rows of each band left out of the last pool's output
    for first, last in zip(starts, ends):
        stage_in = full_in if first == 0 else full[first - 1]

        def ok(k):                 # leave k rows out of each band of the stage input: is the output right?
            if first == 0:         # conv1_1's input: leaving padding rows out is padding less (none kept back)
                rows = sig.run(sig.image(n, pad - k), specs[:last + 1], padded=True)[-1]
            else:
                keep = kept(stage_in, k)
                if keep is None:
                    return False
                rows = sig.run([stage_in[p] for p in keep], specs[first:last + 1])[-1]
            want = kept(full[last], k // 2)
            return want is not None and rows == [full[last][p] for p in want]

        k = _largest(ok, pad if first == 0 else len(stage_in))
        if first == 0:
            first_pad = pad - k
        else:                                                       # the previous pool's gather: k_left -> k
            gathers[specs[first - 1].name] = pieces(full[first - 1], k_left, k)
        k_left = k // 2
    gathers[specs[ends[-1]].name] = pieces(full[ends[-1]], k_left, 0)   # whole again
    return first_pad, gathers


@dataclass(frozen=True)
class Plan:
    """pad: conv1_1's shrunk pad (rows, columns); gathers: {pool name: (row pieces, column pieces)} for each pool
    after which something is gathered (either may be None: that axis stays as it is)."""
    pad: tuple
    gathers: dict


def plan_body(specs, H, W):
    """The plan for an H x W image through `specs` (geometry.Spec of conv1_1 .. the last pool to plan)."""
    specs = tuple(specs)
    (ph, rows), (pw, cols) = plan_axis(specs, H), plan_axis(specs, W)
    gathers = {name: (rows[name], cols[name]) for name in rows if (rows[name], cols[name]) != (None, None)}
    return Plan((ph, pw), gathers)


# ----------------------------------------------------------------------------- the gather, forward and backward

def _along(axis, start, stop):
    """An index that slices `axis` of an (N, C, H, W) array."""
    return (slice(None),) * axis + (slice(start, stop),)


def _gather_axis(x, axis, parts):
    """x (N, C, n_in, .) -> (N, C, n_out, .) along `axis` (2: rows, 3: columns), piece by piece (see pieces);
    parts None: x itself."""
    if parts is None:
        return x
    xp, out = xp_of(x), []
    for kind, a, b in parts:
        if kind == "rows":
            out.append(x[_along(axis, a, b)])
        else:                                                       # row a, b times (a view, no copy)
            shape = list(x.shape)
            shape[axis] = b
            out.append(xp.broadcast_to(x[_along(axis, a, a + 1)], tuple(shape)))
    return xp.concatenate(out, axis=axis)


def _gather_axis_backward(dout, axis, parts, n_in):
    """dout (N, C, n_out, .) -> dx (N, C, n_in, .): each copy's gradient goes to the row it copied."""
    if parts is None:
        return dout
    shape = list(dout.shape)
    shape[axis] = n_in
    dx, t = xp_of(dout).zeros(tuple(shape), dtype=dout.dtype), 0
    for kind, a, b in parts:
        if kind == "rows":
            dx[_along(axis, a, b)] += dout[_along(axis, t, t + b - a)]
            t += b - a
        else:
            dx[_along(axis, a, a + 1)] += dout[_along(axis, t, t + b)].sum(axis=axis, keepdims=True)
            t += b
    return dx


def gather_forward(x, gather):
    """x (N, C, H, W) -> the map with its rows, then its columns, gathered: gather = (row pieces, column pieces)."""
    rows, cols = gather
    return _gather_axis(_gather_axis(x, 2, rows), 3, cols)


def gather_backward(dout, gather, x_shape):
    """The gradient of gather_forward's output -> dx (x_shape): columns first, then rows."""
    rows, cols = gather
    return _gather_axis_backward(_gather_axis_backward(dout, 3, cols, x_shape[3]), 2, rows, x_shape[2])
