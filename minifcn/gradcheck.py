"""Numerical derivatives: check any op's hand-written backward against central differences.

For an op  out, cache = forward(**inputs)  and its  grads = backward(dout, cache), pick a random
upstream gradient dout (never all ones: that hides transposed indices) and compare, entry by entry,

    analytic[i]  =  backward(dout)[i]
    numeric[i]   =  sum( (forward(input + h e_i) - forward(input - h e_i)) * dout ) / (2h)

in float64. gradcheck_module(layer_or_net, x) does the same for a layer's or a whole net's forward and
backward (a layer of your own, an FCN head of your own). The relative error of an entry is
|a - n| / max(|a|, |n|, atol): entries smaller than atol are judged on the absolute scale atol, so a
true zero with rounding noise does not count as a 100% error. The result keeps the whole error map of
every input, so a lesson can draw it.
"""
from dataclasses import dataclass, field

import numpy as np

from .backend import to_device, to_numpy, xp_of


@dataclass
class GradcheckResult:
    """Per input name: the error map (NaN where an entry was not sampled), the numeric and the
    analytic gradient; the largest error and where it occurs, as (name, index)."""
    errors: dict = field(default_factory=dict)
    numeric: dict = field(default_factory=dict)
    analytic: dict = field(default_factory=dict)
    max_error: float = 0.0
    where: tuple = None

    def __str__(self):
        lines = [f"{'input':>12}  {'shape':>18}  {'checked':>7}  {'max rel. error':>14}  at"]
        for name, err in self.errors.items():
            checked = int(np.isfinite(err).sum())
            worst = np.unravel_index(np.nanargmax(err), err.shape) if checked else ()
            top = float(np.nanmax(err)) if checked else 0.0
            lines.append(f"{name:>12}  {str(err.shape):>18}  {checked:>7}  {top:>14.3e}  {tuple(map(int, worst))}")
        return "\n".join(lines)


def relative_error(a, n, atol=1e-5):
    """|a - n| / max(|a|, |n|, atol), elementwise."""
    a, n = np.asarray(a, np.float64), np.asarray(n, np.float64)
    return np.abs(a - n) / np.maximum(np.maximum(np.abs(a), np.abs(n)), atol)


def numerical_gradient(forward, inputs, name, dout, indices, h=1e-5, **kwargs):
    """Central differences of <forward(**inputs, **kwargs)[0], dout> w.r.t. inputs[name] at `indices`.

    Returns a float64 NumPy array shaped like inputs[name], NaN outside `indices`.
    The input is changed in place and put back after each entry.
    """
    x = inputs[name]
    grad = np.full(x.shape, np.nan)
    dout = np.asarray(to_numpy(dout), np.float64)
    for idx in indices:
        old = x[idx].item()
        x[idx] = old + h
        plus = np.array(to_numpy(forward(**inputs, **kwargs)[0]), np.float64)   # a copy: out may be a view of x
        x[idx] = old - h
        minus = np.array(to_numpy(forward(**inputs, **kwargs)[0]), np.float64)
        x[idx] = old
        grad[idx] = np.sum((plus - minus) * dout) / (2 * h)   # difference first: less rounding noise
    return grad


def gradcheck(forward, backward, inputs, h=1e-5, num_samples=None, seed=0, atol=1e-5, **kwargs):
    """Compare backward with central differences of forward, in float64, with a random dout.

    forward(**inputs, **kwargs) -> (out, cache); backward(dout, cache) -> the gradient of every
    entry of `inputs`, in the same order (a tuple, or one array for a single input). Entries of
    `inputs` that are None are passed through and not checked; kwargs are passed as they are (use
    them for strides, labels...; h, num_samples, seed and atol are gradcheck's own and never reach
    forward). num_samples: check that many random entries per input instead of all of them. Returns
    a GradcheckResult.
    """
    rng = np.random.default_rng(seed)
    inputs = {k: (None if v is None else xp_of(v).asarray(v, dtype=np.float64).copy()) for k, v in inputs.items()}
    out, cache = forward(**inputs, **kwargs)
    out_shape = np.shape(to_numpy(out))
    dout = rng.standard_normal(out_shape) if out_shape else np.float64(rng.standard_normal())
    dout_dev = dout if np.isscalar(out) or not out_shape else xp_of(out).asarray(dout)
    grads = backward(dout_dev, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    result = GradcheckResult()
    for (name, x), g in zip(inputs.items(), grads):
        if x is None:
            continue
        if g is None or tuple(g.shape) != tuple(x.shape):
            raise ValueError(f"gradcheck: backward returned {None if g is None else g.shape} for {name!r}, "
                             f"whose shape is {x.shape}")
        flat = range(x.size) if num_samples is None or num_samples >= x.size else \
            rng.choice(x.size, num_samples, replace=False)
        indices = [np.unravel_index(int(i), x.shape) for i in flat]
        numeric = numerical_gradient(forward, inputs, name, dout_dev, indices, h, **kwargs)
        analytic = np.asarray(to_numpy(g), np.float64)
        err = relative_error(analytic, np.nan_to_num(numeric), atol)
        err = np.where(np.isfinite(err), err, np.inf)               # a NaN or inf gradient is infinitely wrong
        err = np.where(np.isnan(numeric), np.nan, err)              # NaN only where no entry was sampled
        result.errors[name], result.numeric[name], result.analytic[name] = err, numeric, analytic
        if indices and np.nanmax(err) >= result.max_error:
            worst = np.unravel_index(np.nanargmax(err), err.shape)
            result.max_error, result.where = float(err[worst]), (name, tuple(int(i) for i in worst))
    return result


def gradcheck_module(module, x, keys=None, num_samples=2, seed=0, h=1e-5, atol=1e-5):
    """Check a layer's or a whole net's backward: gradcheck on its forward(x, train=True) and backward(dout).

    module: anything with params (a mapping "<layer>.W" -> array), grads (filled by backward),
    forward(x, train) and backward(dout) -> dx: a minifcn.layers object (the built-in ones or your own) or an
    FCN (the four nets or your own head). It must be in float64 (net.astype(np.float64); a layer's params
    cast by hand), and random in the checked sense: no dropout (build with dropout=0) and, for an FCN, score
    and upsampling layers made non-zero and learnable_upsampling=True, else most of the net's gradients are
    zero and prove little. keys: the parameters to check (default: every one not in module.frozen);
    num_samples: random entries per input and parameter (None: all of them, slow for a net). Returns a
    GradcheckResult with the inputs "x" and the keys. The module's parameter arrays are replaced by gradcheck's
    float64 copies (same values).

        >>> net = minifcn.models.build("fcn16s", num_classes=3, backbone="vgg16-tiny", dropout=0,
        ...                            learnable_upsampling=True).astype(np.float64)
        >>> gradcheck_module(net, np.random.default_rng(0).standard_normal((1, 3, 7, 5))).max_error < 1e-5
        True
    """
    frozen = set(getattr(module, "frozen", ()))
    keys = [k for k in module.params if k not in frozen] if keys is None else list(keys)
    unknown = [k for k in keys if k not in module.params]
    if unknown:
        raise KeyError(f"gradcheck_module: {unknown} are not parameters of {_name(module)}; "
                       f"its keys are {list(module.params)}")
    wrong = {k: str(v.dtype) for k, v in module.params.items() if v.dtype != np.float64}
    if wrong or getattr(x, "dtype", None) != np.float64:
        what = f"its parameters {wrong}" if wrong else f"x ({getattr(x, 'dtype', type(x).__name__)})"
        raise TypeError(f"gradcheck_module: {_name(module)} must run in float64, but {what} are not: use "
                        "net.astype(np.float64) (or each layer.params[k] = v.astype(np.float64)) and "
                        "x.astype(np.float64); in float32 central differences are rounding noise")
    from .layers import Dropout                 # (here: minifcn.layers needs nothing of this module)
    drops = [layer.name for layer in getattr(module, "layers", [module]) if isinstance(layer, Dropout) and layer.p]
    if drops:
        raise ValueError(f"gradcheck_module: dropout {drops} draws a new mask every forward, so differences do not "
                         "compare; build the net with dropout=0")

    def forward(x, **params):
        for k, v in params.items():           # gradcheck nudges its own copies: hand them to the module
            module.params[k] = v
        return module.forward(x, train=True), None

    def backward(dout, cache):
        dx = module.backward(dout)
        missing = [k for k in keys if k not in module.grads]
        if missing:
            raise ValueError(f"gradcheck_module: backward filled no gradient for {missing} (frozen? pass keys=...)")
        return (dx,) + tuple(module.grads[k] for k in keys)

    return gradcheck(forward, backward, {"x": x, **{k: module.params[k] for k in keys}}, h=h,
                     num_samples=num_samples, seed=seed, atol=atol)


def _name(module):
    return getattr(module, "arch", None) or getattr(module, "name", None) or type(module).__name__


def check_all_ops(seed=0, unwritten_ok=False, device="cpu"):
    """Gradient-check every op of minifcn.ops on small float64 inputs; returns {op name: GradcheckResult}.

    unwritten_ok: an op that raises NotImplementedError (an assignment not done yet) maps to None instead of
    stopping the rest, so a student sees every op that is written checked. device "gpu": the inputs (and the
    labels) live on the GPU, so the ops' CuPy path is the one checked."""
    from . import ops
    rng = np.random.default_rng(seed)
    normal = rng.standard_normal
    distinct = rng.permutation(2 * 3 * 7 * 6).reshape(2, 3, 7, 6) * 0.1      # no ties for max pooling
    x = normal((2, 3, 5, 4))
    off_zero = np.where(np.abs(x) < 1e-2, 0.5, x)                              # no ReLU kink within h
    labels = rng.integers(0, 4, (2, 3, 5))
    labels[0, 0, :2] = 255
    checks = {
        "conv2d": (ops.conv2d_forward, ops.conv2d_backward,
                   dict(x=normal((2, 3, 7, 6)), W=normal((4, 3, 3, 3)), b=normal(4)), dict(stride=2, pad=1)),
        "conv_transpose2d": (ops.conv_transpose2d_forward, ops.conv_transpose2d_backward,
                             dict(x=normal((2, 3, 4, 5)), W=normal((3, 2, 4, 4)), b=normal(2)), dict(stride=2, pad=1)),
        "max_pool2d": (ops.max_pool2d_forward, ops.max_pool2d_backward, dict(x=distinct), dict(kernel=3, stride=2, pad=1)),
        "relu": (ops.relu_forward, ops.relu_backward, dict(x=off_zero), {}),
        "dropout": (ops.dropout_forward, ops.dropout_backward, dict(x=normal((2, 3, 4, 5))), dict(p=0.5, rng=1)),
        "crop": (ops.crop_forward, ops.crop_backward, dict(x=normal((1, 2, 7, 8))), dict(offset=(1, 2), size=(4, 5))),
        "add": (ops.add_forward, ops.add_backward, dict(a=normal((1, 2, 3, 4)), b=normal((1, 2, 3, 4))), {}),
        "scale": (ops.scale_forward, ops.scale_backward, dict(x=normal((1, 2, 3, 4))), dict(factor=0.01)),
        "softmax_cross_entropy": (ops.softmax_cross_entropy, lambda dout, dscores: dscores * dout,
                                  dict(scores=normal((2, 4, 3, 5))), dict(labels=labels, reduction="mean")),
    }
    results = {}
    for name, (f, b, inputs, kw) in checks.items():
        inputs = to_device(inputs, device)
        kw = {k: to_device(v, device) if k == "labels" else v for k, v in kw.items()}   # the loss's labels too
        try:
            results[name] = gradcheck(f, b, inputs, **kw)
        except NotImplementedError:
            if not unwritten_ok:
                raise
            results[name] = None
    return results


def main(argv=None):
    """python -m minifcn.gradcheck [--device gpu]: every op's backward against numerical derivatives."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m minifcn.gradcheck",
                                description="Check every op's backward against central differences (float64, random "
                                            "upstream gradients); exit status 1 if one disagrees by more than 1e-6 or is "
                                            "not written yet.")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="where the ops run (gpu: their CuPy path)")
    args = p.parse_args(argv)
    results = check_all_ops(unwritten_ok=True, device=args.device)
    print(f"{'op':>22}  {'max rel. error':>14}  worst entry")
    for name, res in results.items():
        print(f"{name:>22}  " + (f"{res.max_error:>14.2e}  {res.where}" if res else f"{'-':>14}  not written yet"))
    done = {name: res for name, res in results.items() if res is not None}
    wrong = [name for name, res in done.items() if not res.max_error <= 1e-6]
    worst = max((res.max_error for res in done.values()), default=0.0)
    if wrong:
        print(f"\n{', '.join(wrong)}: the backward disagrees with central differences (above 1e-6)")
    elif done:
        print(f"\n{len(done)} ops agree with central differences to {worst:.1e} (float64, on the {args.device})")
    if len(done) < len(results):
        print(f"{len(results) - len(done)} not written yet (NotImplementedError)")
    return 0 if not wrong and len(done) == len(results) else 1


if __name__ == "__main__":
    from . import cli
    raise SystemExit(cli.run(main, "python -m minifcn.gradcheck"))
