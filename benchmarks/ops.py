"""Each op alone, minifcn against PyTorch, forward and forward+backward, in one run on one machine.

    python benchmarks/ops.py [--device cpu|gpu] [--repeat 3] [--plain] [--append]

The ops and shapes are those of FCN-8s VGG16 on a 500x500 image (conv1_1 pads by 100, so the first
block sees 698x698): the 3x3 convolutions of each width, fc6, fc7, both upsampling sizes, a 2x2 pool
and the loss. There is no smaller size: on 2 CPU cores a run takes a minute or two.

One line per op as it is timed, then a table (--append adds it to benchmarks/RESULTS.md with the date,
the device and the command). How to read it:

  ms        the best of --repeat runs, after one warm-up run; a GPU is synchronised before each clock.
  fwd       minifcn's forward as a layer runs it in training, keeping what backward needs; PyTorch's
            under torch.no_grad(). For the loss, minifcn's one call returns the loss and its gradient
            together, so its fwd and fwd+bwd are the same call.
  ratio     minifcn / PyTorch: below 1, minifcn is faster. nan where PyTorch is not installed, or has
            no CUDA with --device gpu.
  peak MiB  the most memory fwd+bwd holds at once beyond its inputs: tracemalloc on the CPU (it sees
            NumPy's buffers), the memory pool on a GPU. PyTorch's is n/a on the CPU, where no Python
            tool sees its allocations.

minifcn runs what its layers run: the fast paths of minifcn.fast, or with --plain the plain ops of
minifcn.ops. The machine's speed drifts between runs: compare the ratios of one run, not seconds across runs.
"""
import argparse
import datetime
import os
import platform
import sys
import tracemalloc
from pathlib import Path

import numpy as np

os.environ["CUPY_TF32"] = "0"       # TF32 off on CuPy's side (its default, made explicit), before CuPy is imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minifcn import fast, ops  # noqa: E402
from minifcn.backend import get_xp  # noqa: E402
from timing import best_of, watch_cupy_peak  # noqa: E402  (benchmarks/timing.py)

CASES = [  # name, kind, x shape, W shape, stride, pad
    ("conv3x3 64->64 @349", "conv", (1, 64, 349, 349), (64, 64, 3, 3), 1, 1),
    ("conv3x3 128->128 @175", "conv", (1, 128, 175, 175), (128, 128, 3, 3), 1, 1),
    ("conv3x3 256->256 @88", "conv", (1, 256, 88, 88), (256, 256, 3, 3), 1, 1),
    ("conv3x3 512->512 @44", "conv", (1, 512, 44, 44), (512, 512, 3, 3), 1, 1),
    ("fc6 7x7 512->4096 @22", "conv", (1, 512, 22, 22), (4096, 512, 7, 7), 1, 0),
    ("fc7 1x1 4096->4096 @16", "conv", (1, 4096, 16, 16), (4096, 4096, 1, 1), 1, 0),
    ("upscore k64/s32 21ch @16", "deconv", (1, 21, 16, 16), (21, 21, 64, 64), 32, 0),
    ("upscore8 k16/s8 21ch @70", "deconv", (1, 21, 70, 70), (21, 21, 16, 16), 8, 0),
    ("pool 2x2 64ch @698", "pool", (1, 64, 698, 698), None, 2, 0),
    ("loss 21 classes @500", "loss", (1, 21, 500, 500), None, None, None),
]


def minifcn_fns(kind, x, W, stride, pad, labels, plain):
    o = ops if plain else fast
    if kind == "conv":
        fwd = lambda: o.conv2d_forward(x, W, None, stride, pad)            # noqa: E731
        bwd = o.conv2d_backward
    elif kind == "deconv":
        fwd = lambda: o.conv_transpose2d_forward(x, W, None, stride, pad)  # noqa: E731
        bwd = o.conv_transpose2d_backward
    elif kind == "pool":
        fwd = lambda: o.max_pool2d_forward(x, 2, 2)                         # noqa: E731
        bwd = o.max_pool2d_backward
    else:
        fwd = lambda: ops.softmax_cross_entropy(x, labels, reduction="mean")  # noqa: E731
        return fwd, fwd

    def both():
        out, cache = fwd()
        bwd(out, cache)   # out stands in for dout: same shape, values do not matter for time
    return fwd, both


def torch_fns(torch, kind, x, W, stride, pad, labels, device):
    F = torch.nn.functional
    dev = "cuda" if device == "gpu" else "cpu"
    as_t = lambda a: torch.as_tensor(np.asarray(a.get() if hasattr(a, "get") else a), device=dev)   # noqa: E731
    tx = as_t(x).requires_grad_()
    tW = None if W is None else as_t(W).requires_grad_()
    tl = None if labels is None else as_t(labels)
    call = {"conv": lambda: F.conv2d(tx, tW, None, stride, pad),
            "deconv": lambda: F.conv_transpose2d(tx, tW, None, stride, pad),
            "pool": lambda: F.max_pool2d(tx, 2, 2, ceil_mode=True),
            "loss": lambda: F.cross_entropy(tx, tl, ignore_index=255)}[kind]

    def fwd():
        with torch.no_grad():
            call()

    def both():
        out = call()
        out.backward(out.detach() if out.dim() else None)
    return fwd, both


def peak_mib(fn, device, torch=None):
    """The most memory fn holds at once: NumPy's allocations (tracemalloc sees them), CuPy's pool, or
    torch's CUDA allocator. None for torch on the CPU, whose allocations no Python tool sees."""
    if torch is not None:
        if device != "gpu":
            return None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if device == "gpu":
        import cupy
        peak, restore = watch_cupy_peak(cupy)
        try:
            fn()
            cupy.cuda.Device().synchronize()
        finally:
            restore()
        return peak()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--repeat", type=int, default=3, help="timed runs per figure, the best kept (default 3)")
    p.add_argument("--plain", action="store_true", help="time the plain ops (minifcn.ops), not minifcn.fast")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = p.parse_args()
    xp = get_xp(args.device)
    try:
        import torch
        torch.set_num_threads(torch.get_num_threads())
    except ImportError:
        torch = None
    if args.device == "gpu" and torch is not None and not torch.cuda.is_available():
        torch = None
    sync = (lambda: xp.cuda.Device().synchronize()) if args.device == "gpu" else (lambda: None)
    torch_sync = torch.cuda.synchronize if torch is not None and args.device == "gpu" else (lambda: None)
    if torch is not None:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(0)
    rows = []
    for name, kind, x_shape, W_shape, stride, pad in CASES:
        x = xp.asarray(rng.standard_normal(x_shape, dtype=np.float32))
        W = None if W_shape is None else xp.asarray(rng.standard_normal(W_shape, dtype=np.float32) * 0.01)
        labels = xp.asarray(rng.integers(0, 21, (x_shape[0],) + x_shape[2:])) if kind == "loss" else None
        mf, mb = minifcn_fns(kind, x, W, stride, pad, labels, args.plain)
        row = [name, best_of(mf, args.repeat, sync), best_of(mb, args.repeat, sync), peak_mib(mb, args.device)]
        if torch is not None:
            tf, tb = torch_fns(torch, kind, x, W, stride, pad, labels, args.device)
            row += [best_of(tf, args.repeat, torch_sync), best_of(tb, args.repeat, torch_sync),
                    peak_mib(tb, args.device, torch)]
        rows.append(row)
        print(_fmt(row), flush=True)
    table = _table(rows)
    print("\n" + table)
    if args.append:
        header = (f"\n## ops, {datetime.date.today()}, {args.device} ({platform.processor() or platform.machine()}, "
                  f"numpy {np.__version__}{', torch ' + torch.__version__ if torch else ''})\n\n"
                  f"`python benchmarks/ops.py {' '.join(sys.argv[1:])}`\n\n")
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write(header + table + "\n")


def _fmt(row):
    name, mf, mb, mm, *t = row
    s = f"{name:<28} fwd {mf * 1e3:8.1f} ms  fwd+bwd {mb * 1e3:8.1f} ms  peak {mm:7.0f} MiB"
    if t:
        s += f"   torch {t[0] * 1e3:8.1f} / {t[1] * 1e3:8.1f} ms   ratio {mf / t[0]:5.2f} / {mb / t[1]:5.2f}"
    return s


def _table(rows):
    lines = ["| op | minifcn fwd ms | torch fwd ms | ratio | minifcn fwd+bwd ms | torch fwd+bwd ms | ratio "
             "| minifcn peak MiB (fwd+bwd) | torch peak MiB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, mf, mb, mm, *t in rows:
        tf, tb, tm = t if t else (float("nan"), float("nan"), None)
        torch_mem = "n/a" if tm is None else f"{tm:.0f}"
        lines.append(f"| {name} | {mf * 1e3:.1f} | {tf * 1e3:.1f} | {mf / tf:.2f} | {mb * 1e3:.1f} | {tb * 1e3:.1f} "
                     f"| {mb / tb:.2f} | {mm:.0f} | {torch_mem} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
