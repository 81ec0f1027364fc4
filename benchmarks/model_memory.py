"""Parameter count and peak memory of an FCN (default: FCN-8s, VGG16, 500x500, batch 1, float32).

Two ways of counting, both printed:

  counted   the bytes of the arrays themselves. Parameters (plus as many bytes of gradients in
            training) and, for training, the activations that forward(x, train=True) keeps for
            backward: every array in every layer's cache, each underlying buffer once (a conv keeps
            its input, which is the ReLU output before it; an in-place ReLU keeps that same output; a max pool
            keeps a 1-byte argmax). Inference keeps nothing between layers.
  measured  tracemalloc's peak while the pass runs (NumPy reports its array buffers to tracemalloc),
            on top of the parameters. This adds what only lives inside a layer: the im2col columns
            (k*k times the layer's input), padded copies, the backward's temporaries.

    python benchmarks/model_memory.py [--arch fcn8s] [--backbone vgg16] [--size 500] [--classes 21] [--count-only]

It prints the parameter count, then for training and for inference a "counted" line and "measured" lines, in
MiB; a measured line also gives the seconds its pass took (tracemalloc slows it: these are not speed figures). The full default
takes about a minute and 1.7 GiB on 2 CPU cores; `--backbone vgg16-tiny --size 32 --count-only` takes a second.
CPU only; there is no --append: RESULTS.md's entries for it are entered by hand.
"""
import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minifcn.models import ARCHITECTURES, BACKBONES, build  # noqa: E402

MB = 1024 ** 2


def arrays_in(obj):
    """Every NumPy array inside nested tuples, lists and dicts."""
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from arrays_in(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from arrays_in(item)


def kept_bytes(net):
    """Bytes of activations held by the caches after forward(train=True), counting each buffer once.
    (A conv's cache also refers to its weights: those are parameters, counted apart.)"""
    params = {id(v) for v in net.params.values()}
    buffers = {}
    for a in arrays_in([layer.cache for layer in net.layers] + [net.cache]):
        while isinstance(a.base, np.ndarray):       # a view: count the array it looks into
            a = a.base
        if id(a) not in params:
            buffers[id(a)] = a.nbytes
    return sum(buffers.values())


def peak(step):
    """tracemalloc's peak (bytes) of what `step` allocates, and its wall time."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    t = time.perf_counter()
    out = step()
    seconds = time.perf_counter() - t
    peak_bytes = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak_bytes, seconds, out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="fcn8s", choices=list(ARCHITECTURES), help="fcn32s, fcn16s, fcn8s or fcn8s-atonce (default fcn8s)")
    ap.add_argument("--backbone", default="vgg16", choices=list(BACKBONES), help="vgg16 or vgg16-tiny (default vgg16)")
    ap.add_argument("--size", type=int, default=500, help="the input's side in pixels (default 500)")
    ap.add_argument("--classes", type=int, default=21, help="score channels (default 21, PASCAL VOC's)")
    ap.add_argument("--count-only", action="store_true", help="skip the tracemalloc runs of inference and backward")
    args = ap.parse_args()

    net = build(args.arch, num_classes=args.classes, backbone=args.backbone)
    x = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size)).astype(np.float32)
    n_params = net.num_params()
    param_bytes = sum(v.nbytes for v in net.params.values())
    print(f"{args.arch}, backbone {args.backbone}, {args.classes} classes, input 1x3x{args.size}x{args.size} float32")
    print(f"parameters: {n_params:,} ({net.num_params(trainable_only=True):,} trainable; the rest is the fixed "
          f"bilinear upsampling) = {param_bytes / MB:,.1f} MiB")

    train_peak, t_fwd, scores = peak(lambda: net.forward(x, train=True))
    kept = kept_bytes(net)
    print("\ntraining (forward(train=True), then backward)")
    print(f"  counted:  parameters {param_bytes / MB:,.1f} + gradients {param_bytes / MB:,.1f} + kept activations "
          f"{kept / MB:,.1f} = {(2 * param_bytes + kept) / MB:,.1f} MiB")
    print(f"  measured: forward peak {(param_bytes + train_peak) / MB:,.1f} MiB (parameters + {train_peak / MB:,.1f}), "
          f"{t_fwd:.1f} s")
    if not args.count_only:
        dscores = np.ones_like(scores)
        back_peak, t_back, _ = peak(lambda: net.backward(dscores))
        print(f"  measured: backward peak {(param_bytes + kept + back_peak) / MB:,.1f} MiB "
              f"(parameters + kept + {back_peak / MB:,.1f} of gradients and temporaries), {t_back:.1f} s")
    del scores
    net.forward(np.zeros((1, 3, 1, 1), np.float32), train=False)       # drop the caches
    net.grads = {}
    for layer in net.layers:
        layer.grads = {}

    print("\ninference (forward(train=False))")
    print(f"  counted:  parameters {param_bytes / MB:,.1f} MiB, kept activations 0 (no caches)")
    if not args.count_only:
        infer_peak, t_inf, _ = peak(lambda: net.forward(x, train=False))
        print(f"  measured: peak {(param_bytes + infer_peak) / MB:,.1f} MiB (parameters + {infer_peak / MB:,.1f} of "
              f"live activations and temporaries), {t_inf:.1f} s")


if __name__ == "__main__":
    main()
