"""Grade a student's minifcn: python -m minifcn.grade [PATH] [--json results.json] [--only A2 ...]

PATH is the student's package folder (PATH/minifcn/ or the package itself); by default the reference,
which must score full marks. Each assignment (minifcn.assignments.ASSIGNMENTS) has a list of checks,
each worth some points: comparisons with the loop specifications (im2col_naive, conv2d_naive, ...)
and with the reference, gradient checks of the student's backward against the student's forward,
adjointness, and hidden cases (random shapes, strides and pads drawn from a seed students never see).

How a student's code is run:
  - one process per assignment, with a time limit: an endless loop or a crash costs that assignment's
    remaining checks, nothing else;
  - in that process the student's package is imported under its own name, `student_minifcn`, so it
    never mixes with the reference `minifcn` the checks compare against;
  - each assignment is graded on its own: the functions of the *other* assignments are the reference's
    (a broken im2col does not sink conv2d's marks);
  - a check that raises (NotImplementedError included) or gives a wrong answer scores 0; the others go on;
  - the graded functions may not change their array arguments in place (the reference's answer is computed
    from the same arrays afterwards), nor call the loop specifications (they raise while graded).

The score table goes to the terminal; --json PATH also writes Gradescope's results.json (nothing is
written without it). Hidden checks get the visibility "after_due_date" there. The optional assignments
(OPTIONAL in assignments.py) are not in the total: "40 / 40 (+6 optional)". On Gradescope, set the
assignment's total points to the required points (`python -m minifcn.grade` on the reference prints them,
after the slash): the optional ones then count as extra credit.

Writing an assignment's checks (it is registered in assignments.py; its recipe is there and in lessons/README.md):
  - a check is a function decorated with @check("A6", "what it checks", points, hidden=False), called as
    run(s, rng): s holds the student's modules by their last name (s.im2col, s.conv, s.pool for
    minifcn/ops/pool.py, ...), rng is a NumPy generator. It returns a short message when it passes and raises
    when it fails; close(what, got, want, tol) (pass tol ~1e-5 for float32), grad_ok(gradcheck(...), "x") and
    each_case(cases, test) do most of the work. Checks are numbered A6.1, A6.2, ... in the order written;
  - add checks after all the existing ones, never between: each check's rng is seeded with (the seed, its
    position in CHECKS), so a check inserted earlier changes the hidden cases of every check after it (and
    the numbers of the checks after it in its assignment);
  - a visible check's message may show shapes and values (it is the student's feedback); a hidden check's
    never does: only the case's number and the kind of error. So whatever a hidden check requires (an
    option, a dtype, a tie rule) must also be in a visible one.
"""
import argparse
import functools
import importlib
import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from . import cli, models as ref_models, ops as ref_ops
from .assignments import ASSIGNMENTS, OPTIONAL, PACKAGE, SPECIFICATIONS   # (the loop specifications raise while graded)
from .backend import to_numpy
from .gradcheck import gradcheck
from .im2col import col2im_naive, conv_output_size, im2col_naive

SEED = 2015            # the hidden cases' seed: change it each term (or pass --seed)
STUDENT = "student_minifcn"
HERE = Path(__file__).resolve()
MAX_FILE = 10 * 2**20  # bytes a grading process may write to one file (its stderr included): a print loop fills no disk


# ============================================================================= checks and their points

@dataclass
class Check:
    id: str            # "A2.5"
    assignment: str    # "A2"
    name: str
    points: int
    run: callable      # run(s, rng) -> a message on success; raises on failure. s: the student's modules
    hidden: bool = False


CHECKS = []


def check(assignment, name, points, hidden=False):
    """Register the decorated function as the next check of `assignment` (a key of ASSIGNMENTS, or this raises:
    a check of an unlisted assignment would never run)."""
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"check {name!r}: assignment {assignment!r} is not in ASSIGNMENTS (minifcn/assignments.py; "
                         f"listed: {', '.join(ASSIGNMENTS)}); register it there first")

    def register(run):
        number = 1 + sum(c.assignment == assignment for c in CHECKS)
        CHECKS.append(Check(f"{assignment}.{number}", assignment, name, points, run, hidden))
        return run
    return register


def close(what, got, want, tol=1e-8):
    """Pass (return a message) if `got` equals `want` up to tol, relative to want's largest entry."""
    got, want = np.asarray(to_numpy(got), np.float64), np.asarray(to_numpy(want), np.float64)
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {got.shape}, expected {want.shape}")
    err = np.abs(got - want)
    worst = float(err.max(initial=0.0)) / max(1.0, float(np.abs(want).max(initial=0.0)))
    if not worst <= tol:                                    # NaN fails too
        at = tuple(int(i) for i in np.unravel_index(np.argmax(np.nan_to_num(err, nan=np.inf)), err.shape))
        raise AssertionError(f"{what}: off by {worst:.2e} at index {at} (tolerance {tol:.0e})")
    return f"{what} agrees to {worst:.1e}"


def grad_ok(result, name, tol=1e-6):
    """Pass if the gradient check of input `name` is within tol everywhere."""
    errors = result.errors[name]
    err = float(np.nanmax(errors))
    if not err <= tol:
        at = tuple(int(i) for i in np.unravel_index(np.nanargmax(errors), errors.shape))
        what = f"relative error {err:.2e}" if np.isfinite(err) else "NaN or infinite"
        raise AssertionError(f"gradient of {name}: {what} at index {at} (tolerance {tol:.0e})")
    return f"d{name} agrees with central differences to {err:.1e}"


class CaseFailure(AssertionError):
    """Case `case` of `cases` failed with an exception of type `kind` (its account follows in the message)."""

    def __init__(self, case, cases, e):
        super().__init__(f"case {case} of {cases}: {failure(e)}")
        self.case, self.cases, self.kind = case, cases, type(e).__name__


def each_case(cases, test):
    """Run test(case) on every case; a failure names the case by its number only (hidden cases stay hidden)."""
    for k, case in enumerate(cases):
        try:
            test(*case)
        except Exception as e:
            raise CaseFailure(k + 1, len(cases), e) from None
    return f"all {len(cases)} cases agree"


def geometries(rng, n, dilation=True):
    """n random (x shape, kernel, stride, pad, dilation) with an output of at least 1x1."""
    cases = []
    while len(cases) < n:
        k, s, p = rng.integers(1, 5, 2), rng.integers(1, 4, 2), rng.integers(0, 3, 2)
        d = rng.integers(1, 3, 2) if dilation else np.ones(2, int)
        shape = tuple(int(v) for v in (rng.integers(1, 3), rng.integers(1, 4), *rng.integers(1, 10, 2)))   # N C H W
        if all(conv_output_size(shape[2 + a], k[a], s[a], p[a], d[a]) >= 1 for a in (0, 1)):
            cases.append((shape, *(tuple(int(v) for v in t) for t in (k, s, p, d))))
    return cases


# ----------------------------------------------------------------------------- A1 im2col and col2im

VISIBLE_GEOMETRIES = [((2, 3, 6, 5), (2, 3), (2, 1), (1, 0), 1),      # rectangular kernel, strides, padding
                      ((1, 2, 7, 7), 3, 1, 2, 2),                        # dilation 2
                      ((2, 4, 3, 5), 1, 1, 0, 1)]                        # 1x1: the columns are x itself


def _case_name(kernel, stride, pad, dilation):
    """How a visible failure names its case (a hidden one never shows its message)."""
    return f"(kernel {kernel}, stride {stride}, pad {pad}, dilation {dilation})"


def _im2col_vs_loops(s, shape, kernel, stride, pad, dilation, rng):
    x, geometry = rng.standard_normal(shape), (kernel, stride, pad, dilation)
    close(f"im2col{_case_name(*geometry)}", s.im2col.im2col(x, *geometry), im2col_naive(x, *geometry))


def _col2im_vs_loops(s, shape, kernel, stride, pad, dilation, rng):
    geometry = (kernel, stride, pad, dilation)
    cols = rng.standard_normal(im2col_naive(np.zeros(shape), *geometry).shape)
    close(f"col2im{_case_name(*geometry)}", s.im2col.col2im(cols, shape, *geometry),
          col2im_naive(cols, shape, *geometry))


@check("A1", "im2col equals the loop specification: 3x3 kernel, stride 1, pad 1", 2)
def _(s, rng):
    return _im2col_vs_loops(s, (2, 3, 5, 6), 3, 1, 1, 1, rng) or "equal to im2col_naive"


@check("A1", "im2col: rectangular kernel, strides, padding, dilation, 1x1 kernel", 2)
def _(s, rng):
    return each_case(VISIBLE_GEOMETRIES, lambda *g: _im2col_vs_loops(s, *g, rng))


@check("A1", "im2col: hidden cases", 2, hidden=True)
def _(s, rng):
    return each_case(geometries(rng, 6), lambda *g: _im2col_vs_loops(s, *g, rng))


@check("A1", "col2im equals the loop specification: overlapping patches (3x3, stride 1 and 2, pad 1), dilation 2", 2)
def _(s, rng):
    return each_case([((2, 3, 5, 6), 3, 1, 1, 1), ((1, 2, 7, 6), 3, 2, 1, 1), ((1, 2, 7, 7), 3, 1, 2, 2)],
                     lambda *g: _col2im_vs_loops(s, *g, rng))


@check("A1", "col2im: hidden cases", 1, hidden=True)
def _(s, rng):
    return each_case(geometries(rng, 6), lambda *g: _col2im_vs_loops(s, *g, rng))


@check("A1", "im2col and col2im are adjoint: <im2col(x), c> = <x, col2im(c)>", 1)
def _(s, rng):
    shape, geometry = (2, 3, 7, 6), ((3, 2), 2, 1, 1)
    x = rng.standard_normal(shape)
    cols = s.im2col.im2col(x, *geometry)
    c = rng.standard_normal(np.shape(cols))
    return close("<x, col2im(c)>", np.sum(x * to_numpy(s.im2col.col2im(c, shape, *geometry))),
                 np.sum(to_numpy(cols) * c))


# ----------------------------------------------------------------------------- A2 convolution

def _conv_inputs(rng, shape, F, kernel, bias=True):
    KH, KW = (kernel, kernel) if isinstance(kernel, int) else kernel
    return dict(x=rng.standard_normal(shape), W=rng.standard_normal((F, shape[1], KH, KW)),
                b=rng.standard_normal(F) if bias else None)


@check("A2", "conv2d_forward equals conv2d_naive: 3x3 kernel, stride 1, pad 1, bias", 2)
def _(s, rng):
    a = _conv_inputs(rng, (2, 3, 6, 5), 4, 3)
    return close("conv2d_forward", s.conv.conv2d_forward(**a, stride=1, pad=1)[0],
                 ref_ops.conv2d_naive(**a, stride=1, pad=1))


@check("A2", "conv2d_forward: 2x3 kernel, stride 2, pad (0, 1), no bias; dilation 2", 1)
def _(s, rng):
    def test(stride, pad, dilation):
        a = _conv_inputs(rng, (2, 3, 7, 6), 5, (2, 3), bias=False)
        close(f"conv2d_forward{_case_name((2, 3), stride, pad, dilation)}",
              s.conv.conv2d_forward(**a, stride=stride, pad=pad, dilation=dilation)[0],
              ref_ops.conv2d_naive(**a, stride=stride, pad=pad, dilation=dilation))
    return each_case([(2, (0, 1), 1), (1, 1, 2)], test)


@check("A2", "conv2d_forward: hidden cases", 1, hidden=True)
def _(s, rng):
    def test(shape, k, st, p, d):
        a = _conv_inputs(rng, shape, int(rng.integers(1, 4)), k, bias=bool(rng.integers(2)))
        close("conv2d_forward", s.conv.conv2d_forward(**a, stride=st, pad=p, dilation=d)[0],
              ref_ops.conv2d_forward(**a, stride=st, pad=p, dilation=d)[0])
    return each_case(geometries(rng, 6), test)


def _conv_gradcheck(s, rng, name):
    a = _conv_inputs(rng, (2, 3, 5, 4), 4, 3)
    return grad_ok(gradcheck(s.conv.conv2d_forward, s.conv.conv2d_backward, a, stride=2, pad=1), name)


@check("A2", "conv2d_backward: gradient check of dx (stride 2, pad 1)", 2)
def _(s, rng):
    return _conv_gradcheck(s, rng, "x")


@check("A2", "conv2d_backward: gradient check of dW", 2)
def _(s, rng):
    return _conv_gradcheck(s, rng, "W")


@check("A2", "conv2d_backward: gradient check of db; db is None without a bias", 1)
def _(s, rng):
    message = _conv_gradcheck(s, rng, "b")
    out, cache = s.conv.conv2d_forward(**_conv_inputs(rng, (1, 2, 4, 4), 3, 3, bias=False), pad=1)
    db = s.conv.conv2d_backward(rng.standard_normal(out.shape), cache)[2]
    assert db is None, f"without a bias, db must be None, got {type(db).__name__}"
    return message


@check("A2", "conv2d_backward: hidden cases", 1, hidden=True)
def _(s, rng):
    def test(shape, k, st, p, d):
        a = _conv_inputs(rng, shape, int(rng.integers(1, 4)), k)
        out, cache = s.conv.conv2d_forward(**a, stride=st, pad=p, dilation=d)
        ref_out, ref_cache = ref_ops.conv2d_forward(**a, stride=st, pad=p, dilation=d)
        dout = rng.standard_normal(ref_out.shape)
        for name, g, want in zip(("dx", "dW", "db"), s.conv.conv2d_backward(dout, cache),
                                 ref_ops.conv2d_backward(dout, ref_cache)):
            close(name, g, want)
    return each_case(geometries(rng, 6), test)


# ----------------------------------------------------------------------------- A3 transposed convolution, bilinear

def _deconv_inputs(rng, shape, C_out, kernel, bias=True):
    return dict(x=rng.standard_normal(shape), W=rng.standard_normal((shape[1], C_out, *kernel)),
                b=rng.standard_normal(C_out) if bias else None)


@check("A3", "conv_transpose2d_forward equals conv_transpose2d_naive: 4x4 kernel, stride 2, pad 1", 2)
def _(s, rng):
    a = _deconv_inputs(rng, (2, 3, 3, 4), 2, (4, 4))
    return close("conv_transpose2d_forward", s.conv.conv_transpose2d_forward(**a, stride=2, pad=1)[0],
                 ref_ops.conv_transpose2d_naive(**a, stride=2, pad=1))


@check("A3", "conv_transpose2d_forward: hidden cases", 1, hidden=True)
def _(s, rng):
    def test(shape, k, st, p, _):
        p = tuple(min(p[a], (k[a] - 1) // 2) for a in (0, 1))         # keeps the output at least 1x1
        a = _deconv_inputs(rng, shape, int(rng.integers(1, 4)), k, bias=bool(rng.integers(2)))
        close("conv_transpose2d_forward", s.conv.conv_transpose2d_forward(**a, stride=st, pad=p)[0],
              ref_ops.conv_transpose2d_naive(**a, stride=st, pad=p))
    return each_case(geometries(rng, 6, dilation=False), test)


@check("A3", "conv_transpose2d is the adjoint of conv2d: <conv2d(z, W), x> = <z, conv_transpose2d(x, W)>", 1)
def _(s, rng):
    W, z = rng.standard_normal((3, 2, 4, 3)), rng.standard_normal((2, 2, 8, 7))   # conv2d: 2 -> 3 channels
    y = ref_ops.conv2d_forward(z, W, stride=2, pad=1)[0]
    x = rng.standard_normal(y.shape)
    zx = to_numpy(s.conv.conv_transpose2d_forward(x, W, stride=2, pad=1)[0])
    return close("<z, conv_transpose2d(x, W)>", np.sum(z * zx), np.sum(y * x))


def _deconv_gradcheck(s, rng, names, bias=True):
    a = _deconv_inputs(rng, (2, 3, 3, 4), 2, (4, 3), bias)
    result = gradcheck(s.conv.conv_transpose2d_forward, s.conv.conv_transpose2d_backward, a, stride=2, pad=1)
    return "; ".join(grad_ok(result, name) for name in names)


@check("A3", "conv_transpose2d_backward: gradient check of dx (4x3 kernel, stride 2, pad 1)", 1)
def _(s, rng):
    return _deconv_gradcheck(s, rng, ["x"], bias=False)         # without a bias: a wrong db costs the next check only


@check("A3", "conv_transpose2d_backward: gradient check of dW and db", 1)
def _(s, rng):
    return _deconv_gradcheck(s, rng, ["W", "b"])


@check("A3", "bilinear_kernel: k = 3 (float64) and k = 4 (float32)", 1)
def _(s, rng):
    for k, dtype, ramp in ((3, np.float64, [0.5, 1, 0.5]), (4, np.float32, [0.25, 0.75, 0.75, 0.25])):
        got = s.conv.bilinear_kernel(k, dtype)
        assert got.dtype == dtype, f"bilinear_kernel({k}, {np.dtype(dtype)}): dtype {got.dtype}"
        close(f"bilinear_kernel({k})", got, np.outer(ramp, ramp), tol=1e-7)
    return "both kernels right"


@contextmanager
def reference(module, name):
    """Within the block, the student's module uses the reference's `name` (a wrong bilinear_kernel then
    costs its own checks, not bilinear_weight's and the upsampling's as well)."""
    theirs = getattr(module, name)
    setattr(module, name, getattr(ref_ops, name))
    try:
        yield
    finally:
        setattr(module, name, theirs)


@check("A3", "bilinear_kernel: hidden sizes and dtypes", 1, hidden=True)
def _(s, rng):
    def test(k, dtype):
        got = s.conv.bilinear_kernel(k, dtype)
        assert got.dtype == dtype, f"dtype {got.dtype}, expected {np.dtype(dtype)}"
        close("bilinear_kernel", got, ref_ops.bilinear_kernel(k, dtype), tol=1e-6)
    return each_case([(int(k), dtype) for k in rng.integers(1, 33, 6) for dtype in (np.float32, np.float64)], test)


@check("A3", "bilinear_weight: the kernel on the channel diagonal, zeros elsewhere", 1)
def _(s, rng):
    with reference(s.conv, "bilinear_kernel"):
        W = s.conv.bilinear_weight(3, 4, np.float32)
    assert W.dtype == np.float32, f"dtype {W.dtype}, expected float32"
    want = np.zeros((3, 3, 4, 4))
    want[range(3), range(3)] = np.outer([0.25, 0.75, 0.75, 0.25], [0.25, 0.75, 0.75, 0.25])
    return close("bilinear_weight(3, 4)", W, want, tol=1e-7)


@check("A3", "bilinear upsampling x2 (kernel 4, stride 2, pad 1) keeps a ramp a ramp away from the border", 1)
def _(s, rng):
    x = np.broadcast_to(np.arange(6.0), (1, 2, 5, 6)) * np.array([1.0, -2.0]).reshape(1, 2, 1, 1)
    with reference(s.conv, "bilinear_kernel"):
        W = s.conv.bilinear_weight(2, 4, np.float64)
    up = to_numpy(s.conv.conv_transpose2d_forward(np.ascontiguousarray(x), W, stride=2, pad=1)[0])
    assert up.shape == (1, 2, 10, 12), f"upsampled shape {up.shape}, expected (1, 2, 10, 12)"
    inner = up[:, :, 2:-2, 1:-1]                                       # away from the zero padding
    return close("the upsampled ramp", inner, (np.arange(1, 11) / 2 - 0.25) * np.array([1.0, -2.0]).reshape(1, 2, 1, 1)
                 * np.ones((1, 2, 6, 10)))


# ----------------------------------------------------------------------------- A4 the per-pixel loss

def _loss_case(rng, shape=(2, 4, 3, 5), ignore=255, ignored=0.2):
    scores = rng.standard_normal(shape)
    labels = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    labels[rng.random(labels.shape) < ignored] = ignore
    return scores, labels


def _loss_vs_reference(s, scores, labels, **kw):
    loss, dscores = s.loss.softmax_cross_entropy(scores, labels, **kw)
    ref_loss, ref_dscores = ref_ops.softmax_cross_entropy(scores, labels, **kw)
    case = f" ({', '.join([str(scores.dtype)] + [f'{k}={v!r}' for k, v in kw.items()])})"
    assert dscores.dtype == scores.dtype, f"dscores{case} is {dscores.dtype}, expected {scores.dtype} like the scores"
    tol = 1e-5 if scores.dtype == np.float32 else 1e-8
    return close(f"loss{case}", loss, ref_loss, tol) + "; " + close(f"dscores{case}", dscores, ref_dscores, tol)


@check("A4", "softmax_cross_entropy, reduction='sum': loss and dscores, in float64 and float32", 2)
def _(s, rng):
    scores, labels = _loss_case(rng)
    _loss_vs_reference(s, scores.astype(np.float32), labels, reduction="sum")
    return _loss_vs_reference(s, scores, labels, reduction="sum")


@check("A4", "reduction='mean' divides by the number of labelled pixels", 1)
def _(s, rng):
    return _loss_vs_reference(s, *_loss_case(rng), reduction="mean")


@check("A4", "gradient check of dscores (reduction='mean')", 2)
def _(s, rng):
    scores, labels = _loss_case(rng)
    result = gradcheck(s.loss.softmax_cross_entropy, lambda dout, dscores: dscores * dout, dict(scores=scores),
                       labels=labels, reduction="mean")
    return grad_ok(result, "scores")


@check("A4", "ignored pixels (label 255, or the ignore_label given) add no loss and get a zero gradient", 2)
def _(s, rng):
    scores, labels = _loss_case(rng, ignored=0.4)
    loss, dscores = s.loss.softmax_cross_entropy(scores, labels)
    ignored = labels == 255
    other = scores + 5 * rng.standard_normal(scores.shape) * ignored[:, None]   # change only ignored pixels
    assert np.all(to_numpy(dscores).transpose(0, 2, 3, 1)[ignored] == 0), "ignored pixels got a nonzero gradient"
    close("loss with other scores at ignored pixels", s.loss.softmax_cross_entropy(other, labels)[0], loss)
    _loss_vs_reference(s, *_loss_case(rng, ignore=-1, ignored=0.4), ignore_label=-1)
    return _loss_vs_reference(s, scores, labels)


@check("A4", "no labelled pixel: loss 0 and a zero gradient, never NaN", 1)
def _(s, rng):
    scores, labels = rng.standard_normal((1, 3, 2, 2)), np.full((1, 2, 2), 255)
    for reduction in ("sum", "mean"):
        loss, dscores = s.loss.softmax_cross_entropy(scores, labels, reduction=reduction)
        assert loss == 0 and np.all(to_numpy(dscores) == 0), f"{reduction}: loss {loss}, gradient not all zero"
    return "loss 0.0 and zero gradients"


@check("A4", "large scores (|score| ~ 1000) give finite, right answers", 1)
def _(s, rng):
    scores, labels = _loss_case(rng)
    return _loss_vs_reference(s, 1000 * scores, labels, reduction="mean")


@check("A4", "softmax_cross_entropy: hidden cases (shapes, ignore labels, float32)", 1, hidden=True)
def _(s, rng):
    def test(shape, ignore, reduction, dtype):
        scores, labels = _loss_case(rng, shape, ignore)
        scores = scores.astype(dtype)
        loss, dscores = s.loss.softmax_cross_entropy(scores, labels, ignore_label=ignore, reduction=reduction)
        assert dscores.dtype == dtype, f"dscores is {dscores.dtype}, expected {np.dtype(dtype)} like the scores"
        ref_loss, ref_dscores = ref_ops.softmax_cross_entropy(scores, labels, ignore_label=ignore, reduction=reduction)
        tol = 1e-5 if dtype == np.float32 else 1e-8
        close("loss", loss, ref_loss, tol)
        close("dscores", dscores, ref_dscores, tol)
    cases = [(tuple(int(v) for v in rng.integers(1, 6, 4)), int(rng.choice([255, -1, 0])), reduction, dtype)
             for reduction in ("sum", "mean") for dtype in (np.float32, np.float64)]
    return each_case(cases, test)


# ----------------------------------------------------------------------------- A5 the FCN-16s skip

def _fcn16s(seed):
    """A small FCN-16s in float64 with random score layers, an input and an upstream gradient (same for a seed)."""
    rng = np.random.default_rng(seed)
    net = ref_models.build("fcn16s", num_classes=3, backbone="vgg16-tiny", width=0.5, dropout=0, seed=seed)
    net.astype(np.float64)
    for key in ("score_fr.W", "score_fr.b", "score_pool4.W", "score_pool4.b"):     # zeros at the start: randomise
        net.params[key] = rng.standard_normal(net.params[key].shape)
    x = rng.standard_normal((1, 3, 37, 45))
    return net, x, rng.standard_normal((1, 3, 37, 45))


def _fcn16s_backward(s, seed):
    """(dx, net.grads) from the student's FCN16s.forward/backward, and the same from the reference."""
    net, x, dscore = _fcn16s(seed)
    net.forward(x, train=True)
    want = net.backward(dscore), dict(net.grads)
    net, x, dscore = _fcn16s(seed)                        # a fresh net: nothing left over from the reference run
    s.fcn.FCN16s.forward(net, x, train=True)              # the student's methods on the reference's layers
    dx = s.fcn.FCN16s.backward(net, dscore)
    return (dx, net.grads), want


@check("A5", "FCN16s.forward: the scores equal the reference's", 2)
def _(s, rng):
    net, x, _ = _fcn16s(int(rng.integers(1000)))
    return close("scores", s.fcn.FCN16s.forward(net, x, train=True), ref_models.FCN16s.forward(net, x))


@check("A5", "FCN16s.backward: dx equals the reference's", 2)
def _(s, rng):
    got, want = _fcn16s_backward(s, int(rng.integers(1000)))
    return close("dx", got[0], want[0])


@check("A5", "FCN16s.backward: every parameter gradient (net.grads) equals the reference's", 2)
def _(s, rng):
    (_, grads), (_, want) = _fcn16s_backward(s, int(rng.integers(1000)))
    missing = sorted(set(want) - set(grads))
    assert not missing, f"net.grads lacks {missing}; end backward with self.finish_backward(dx)"
    for key in want:
        close(f"net.grads[{key!r}]", grads[key], want[key])
    return f"all {len(want)} gradients agree"


# ============================================================================= running the checks

def find_package(path):
    """The folder of the student's package: PATH/minifcn/, PATH itself, or PATH/ONE_FOLDER/minifcn/ (a
    submission that holds the folder the package was in)."""
    path = Path(path).resolve()
    for candidate in (path / "minifcn", path):
        if (candidate / "__init__.py").is_file():
            return candidate
    deeper = sorted(path.glob("*/minifcn/__init__.py"))
    if len(deeper) == 1:
        return deeper[0].parent
    found = f"; found several, keep one: {', '.join(str(p.parent) for p in deeper)}" if deeper else ""
    raise FileNotFoundError(f"no package at {path}: expected {path / 'minifcn' / '__init__.py'} (submit the "
                            f"minifcn/ folder, the whole package) or {path / '__init__.py'}{found}")


def specification_only(name):
    """What the student's code finds in place of a loop specification while it is graded."""
    def refuse(*args, **kwargs):
        raise RuntimeError(f"{name} is the loop specification to check your code against, not to call from it")
    return refuse


def unchanged_inputs(function):
    """`function`, raising if a call changes one of its NumPy array arguments (or an array in a tuple argument,
    such as a cache) in place: the checks compute the reference's answer from the same arrays afterwards."""
    signature = inspect.signature(function)

    @functools.wraps(function)
    def checked(*args, **kwargs):
        try:
            given = signature.bind(*args, **kwargs).arguments
        except TypeError:
            return function(*args, **kwargs)              # a wrong call: let the function's own error speak
        arrays = [(name, value) for name, value in given.items() if isinstance(value, np.ndarray)]
        arrays += [(f"{name}[{i}]", v) for name, value in given.items() if isinstance(value, tuple)
                   for i, v in enumerate(value) if isinstance(v, np.ndarray)]
        before = [(name, a, (a.shape, a.dtype, a.tobytes())) for name, a in arrays]
        result = function(*args, **kwargs)
        for name, a, state in before:
            if (a.shape, a.dtype, a.tobytes()) != state:
                raise AssertionError(f"{function.__name__} changed its argument {name} in place: work on a copy "
                                     f"({name} = {name} - ...)")
        return result
    return checked


def load_student(package, assignment):
    """Import the student's package under the name `student_minifcn`; put the reference's functions in
    place of the other assignments' (in every module that holds them), make the loop specifications raise,
    and check that this assignment's functions leave their arguments alone (unchanged_inputs). Returns the
    modules named in ASSIGNMENTS by their last name: s.im2col, s.conv (minifcn/ops/conv.py), s.loss, s.fcn."""
    spec = importlib.util.spec_from_file_location(STUDENT, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    sys.modules[STUDENT] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[STUDENT])
    modules = sorted({f.split(":")[0] for _, functions in ASSIGNMENTS.values() for f in functions})
    student = {m: importlib.import_module(f"{STUDENT}.{m}") for m in modules}     # "ops.conv" -> its module

    def replace(theirs, ours):
        """Put `ours` wherever the student's modules hold `theirs` (an import makes a second name for it)."""
        for mod in [m for n, m in sys.modules.items() if n.startswith(STUDENT)]:
            for attr, value in list(vars(mod).items()):
                if value is theirs:
                    setattr(mod, attr, ours)

    for key, (_, functions) in ASSIGNMENTS.items():
        for function in functions:
            module, name = function.split(":")
            if "." in name:                               # methods (A5) are called by no other assignment
                continue
            theirs = getattr(student[module], name)
            if key == assignment:
                replace(theirs, unchanged_inputs(theirs))
            else:
                replace(theirs, getattr(importlib.import_module(f".{module}", __package__), name))
    for function in SPECIFICATIONS:
        module, name = function.split(":")
        theirs = getattr(importlib.import_module(f"{STUDENT}.{module}"), name, None)
        if theirs is not None:
            replace(theirs, specification_only(name))
    return SimpleNamespace(**{m.split(".")[-1]: module for m, module in student.items()})   # s.conv, s.loss, ...


def row(c, score, output):
    """One test in Gradescope's results.json."""
    return {"name": f"{c.id} {c.name}", "score": score, "max_score": c.points, "output": output,
            "visibility": "after_due_date" if c.hidden else "visible"}


def failure(e):
    """A short account of an exception: its type, its message and the line it came from (unless that is
    in this file: a wrong answer is reported by the check itself)."""
    if isinstance(e, CaseFailure):                          # its message already holds the case's account
        return str(e)
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() != HERE]
    where = f"  ({Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def hidden_failure(e):
    """What a failed hidden check may say: the case's number and the kind of error, no shapes and no values
    (an error message, the student's own included, often holds the shapes)."""
    if isinstance(e, CaseFailure):
        return f"case {e.case} of {e.cases} failed ({e.kind}); the hidden cases' shapes stay hidden"
    return f"failed ({type(e).__name__}); the hidden cases' shapes stay hidden"


def grade_here(package, assignment, seed, out):
    """The child process's work: run one assignment's checks, writing the rows to `out` after each one."""
    checks = [c for c in CHECKS if c.assignment == assignment]
    try:
        s = load_student(package, assignment)
    except Exception as e:
        rows = [row(c, 0, f"the package did not import: {failure(e)}") for c in checks]
        Path(out).write_text(json.dumps(rows))
        return
    rows = []
    for c in checks:
        rng = np.random.default_rng([seed, CHECKS.index(c)])      # by position: new checks go after all others
        try:
            with np.errstate(all="ignore"):
                rows.append(row(c, c.points, f"passed: {c.run(s, rng) or 'ok'}"))
        except (Exception, SystemExit) as e:                # NotImplementedError, wrong answers, crashes
            rows.append(row(c, 0, hidden_failure(e) if c.hidden else failure(e)))
        Path(out).write_text(json.dumps(rows))


def run_child(args, env, timeout):
    """Run `python -m minifcn.grade ARGS` with a time limit: (its exit code, None if it ran out of time; the last
    line of its stderr). Its stdout is thrown away and its stderr goes to a file, so a submission that prints
    in a loop costs no memory (and, with MAX_FILE, no disk)."""
    with tempfile.TemporaryFile() as err:
        try:
            code = subprocess.run([sys.executable, "-m", f"{__package__}.grade", *args], cwd=PACKAGE.parent,
                                  env=env, stdout=subprocess.DEVNULL, stderr=err, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = None
        err.seek(max(0, err.seek(0, os.SEEK_END) - 500))
        lines = err.read().decode(errors="replace").strip().splitlines()
    return code, lines[-1] if lines else ""


def grade(path=None, only=None, seed=SEED, timeout=120):
    """Grade the package at `path` (default: the reference), one process per assignment; returns the rows."""
    package = find_package(path if path is not None else PACKAGE)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1",        # write no __pycache__ into the student's folder
           "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}   # small matrices: 1 thread
    selected = [c for c in CHECKS if c.assignment in (only or ASSIGNMENTS)]
    # Import the package once alone first: one that does not import (a syntax error, an endless loop at import
    # time) fails every check, and is found in one time limit, not one per assignment
    code, error = run_child([str(package), "--child", "import"], env, timeout)
    if code is None:
        return [row(c, 0, f"the package did not import within {timeout:g} s (an endless loop when a module is "
                          "imported?)") for c in selected]
    if code != 0:
        return [row(c, 0, "the package did not import" + ("" if c.hidden else f": {error}")) for c in selected]
    rows = []
    for key in only or ASSIGNMENTS:
        checks = [c for c in CHECKS if c.assignment == key]
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "rows.json"
            code, error = run_child([str(package), "--child", key, "--out", str(out), "--seed", str(seed)], env,
                                    timeout)
            done = json.loads(out.read_text()) if out.exists() else []
        rows += done
        if len(done) < len(checks):                         # the process stopped during checks[len(done)]
            stopped = checks[len(done)]
            if code is None:
                why = f"did not finish within {timeout:g} s (an endless loop, or much slower code than needed?)"
            else:
                why = "did not finish: the process " + (f"exited (code {code})" if code >= 0 else
                                                        f"was stopped by signal {-code} ({signal.strsignal(-code)})")
                why += f": {error}" if error and not stopped.hidden else ""
            rows.append(row(stopped, 0, why))
            rows += [row(c, 0, "not run: an earlier check of this assignment stopped the process")
                     for c in checks[len(done) + 1:]]
    return rows


def total(rows):
    """'40 / 40 (+6 optional)': the points, out of the required ones (the optional assignments' are extra)."""
    by_id = {c.id: c for c in CHECKS}
    optional = sum(r["max_score"] for r in rows if by_id[r["name"].split()[0]].assignment in OPTIONAL)
    text = f"{sum(r['score'] for r in rows)} / {sum(r['max_score'] for r in rows) - optional}"
    return text + (f" (+{optional} optional)" if optional else "")


def report(rows, package):
    """The score table, per assignment and check."""
    lines = [f"Grading {package}"]
    by_id = {c.id: c for c in CHECKS}
    for key, (title, _) in ASSIGNMENTS.items():
        mine = [r for r in rows if by_id[r["name"].split()[0]].assignment == key]
        if not mine:
            continue
        title += " (optional)" if key in OPTIONAL else ""
        lines.append(f"\n{key}  {title:<62} {sum(r['score'] for r in mine):>3} / {sum(r['max_score'] for r in mine)}")
        for r in mine:
            ok = "ok  " if r["score"] == r["max_score"] else "FAIL"
            lines.append(f"  {ok} {r['score']:>2}/{r['max_score']:<2} {r['name']}")
            if r["score"] < r["max_score"]:
                lines.append(f"            {r['output']}")
    lines.append(f"\nTotal {total(rows)}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minifcn.grade", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", nargs="?", help="the student's package folder (default: the reference minifcn)")
    parser.add_argument("--json", metavar="PATH", help="also write Gradescope's results.json to PATH")
    parser.add_argument("--only", nargs="+", choices=list(ASSIGNMENTS), help="grade only these assignments")
    parser.add_argument("--timeout", type=float, default=120, help="seconds per assignment (default 120)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the hidden cases")
    parser.add_argument("--child", help=argparse.SUPPRESS)        # internal: one assignment, in this process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:                                               # a grading process: cap what it may write
        try:
            import resource                                      # POSIX only
            resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE, MAX_FILE))   # past it, a write raises OSError
        except (ImportError, ValueError, OSError):
            pass
    if args.child == "import":                                   # internal: does the package import at all?
        try:
            load_student(find_package(args.path), None)
        except Exception as e:
            print(failure(e), file=sys.stderr)
            return 1
        return 0
    if args.child:
        grade_here(Path(args.path), args.child, args.seed, args.out)
        return 0
    # `cd submission && python -m minifcn.grade .` runs the submission's own minifcn (Python looks in the
    # current folder first): this grader would then be the student's copy, grading itself
    if args.path and (Path(args.path).resolve() == PACKAGE or Path(args.path).resolve() in PACKAGE.parents):
        print(f"error: the minifcn running this grader ({PACKAGE}) is inside the folder being graded "
              f"({Path(args.path).resolve()}): Python found the submission's own package first. Run the grader "
              "from another folder (the reference's repository, or wherever the reference minifcn is installed); "
              "to grade the reference, give no PATH.", file=sys.stderr)
        return 2
    if args.json:
        try:                                                     # before grading, not after minutes of it
            cli.check_output_file(args.json, "--json")
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    start = time.time()
    try:
        package, note = find_package(args.path if args.path else PACKAGE), ""
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        if not args.json:
            return 2
        package, note = args.path, f"not graded: {e}"            # Gradescope still gets a results.json, scoring 0
        rows = [row(c, 0, note) for c in CHECKS if c.assignment in (args.only or ASSIGNMENTS)]
    else:
        rows = grade(package, args.only, args.seed, args.timeout)
    if args.json:                                                # first: a closed stdout (| head) must not lose it
        results = {"score": sum(r["score"] for r in rows), "execution_time": round(time.time() - start, 1),
                   "output": note or f"Total {total(rows)}", "tests": rows}
        with cli.atomic_write(args.json, "w") as f:             # a full disk leaves no half-written JSON
            f.write(json.dumps(results, indent=1))
    print(report(rows, package))
    if args.json:
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli.run(main, "python -m minifcn.grade"))  # `| head` ends quietly
