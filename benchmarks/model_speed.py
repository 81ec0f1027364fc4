"""FCN-8s end to end, minifcn against PyTorch: inference and one training step, in one run, one machine.

    python benchmarks/model_speed.py [--device cpu|gpu] [--cases vgg16@500 vgg16-tiny@256]
                                     [--repeat 3] [--plain] [--profile] [--no-train] [--append]

A training step is forward, the per-pixel loss (sum), backward and an SGD update (momentum 0.99,
weight decay 5e-4, the bilinear upsampling frozen), batch 1, float32. Each framework runs in its own
process (started by this script, one after the other), so that each gets the machine to itself and
its peak memory is its own: max RSS on CPU, the allocator's peak on GPU (TF32 off on both sides,
timers synchronised, one warm-up step first). Times are the best of --repeat.

It prints one table row per case as soon as both frameworks have run it, then the whole table. How to
read a row (BACKBONE @ SIZE, an image of SIZE x SIZE):

  s, MiB    minifcn's figure, then PyTorch's, then the ratio minifcn / PyTorch: below 1, minifcn is
            faster or smaller. Peak MiB on the CPU is the worker process's max RSS (Python, the net, the
            timed runs: everything), on a GPU the allocator's peak.
  nan       not measured: the training columns with --no-train, and every column of a framework whose
            process failed (its error is printed above the table; PyTorch without CUDA on --device gpu,
            or not installed at all).
  last      the inference time per pixel of the padded input, (H + 198) x (W + 198), which is what every
            layer sees after conv1_1's 100-pixel pad, in ns: run the cases vgg16@256 vgg16@512 vgg16@1024
            with --no-train to see whether cost grows linearly with the pixels.

The machine's speed drifts between runs (by about 15% on a shared 2-core machine): compare the ratios
of one run, not seconds across runs.

--plain times minifcn with its fast paths off (minifcn.fast.ENABLED = False); --profile adds
minifcn's time per layer (forward and backward of one training step, or forward alone with
--no-train): where the time goes.
--append adds the table to benchmarks/RESULTS.md with the date, the machine and the command (not when a
case has no minifcn figures; missing PyTorch figures are said in the entry).
"""
import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from timing import best_of, watch_cupy_peak  # noqa: E402  (benchmarks/timing.py)


def case_arg(text):
    """--cases' type: BACKBONE@SIZE, refused before any timing when it is not one (it used to end in a
    traceback after both workers had failed, or in a row of nan)."""
    from minifcn.models import BACKBONES
    backbone, _, size = text.partition("@")
    if backbone not in BACKBONES or not size.isdigit() or int(size) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not BACKBONE@SIZE with BACKBONE one of {', '.join(BACKBONES)} "
                                         "and SIZE a number of pixels, e.g. vgg16@500 or vgg16-tiny@256")
    return text


def inputs(size, num_classes=21):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, num_classes, (1, size, size))
    return x, labels


# ----------------------------------------------------------------------------- minifcn

def run_minifcn(backbone, size, device, repeat, plain, profile, train):
    import minifcn.fast
    from minifcn import ops
    from minifcn.backend import get_xp
    from minifcn.models import build
    from minifcn.optim import SGD

    minifcn.fast.ENABLED = not plain
    xp = get_xp(device)
    sync, watch = (xp.cuda.Device().synchronize, watch_cupy_peak(xp)) if device == "gpu" else (lambda: None, None)
    net = build("fcn8s", num_classes=21, backbone=backbone, seed=0).to(device)
    x, labels = (xp.asarray(a) for a in inputs(size))
    opt = SGD(net.params, lr=1e-10, momentum=0.99, weight_decay=5e-4, frozen=net.frozen)

    def train_step():
        scores = net.forward(x, train=True)
        _, dscores = ops.softmax_cross_entropy(scores, labels, reduction="sum")
        net.backward(dscores)
        opt.step(net.grads)

    peak_mib = None
    if watch:       # the peak from one untimed step; then the plain allocator again, so no timed run pays the watch
        (train_step if train else lambda: net.forward(x))()
        sync()
        peak_mib = watch[0]()
        watch[1]()
    result = {"inference": best_of(lambda: net.forward(x), repeat, sync),
              "train": best_of(train_step, repeat, sync) if train else float("nan")}
    result["peak_mib"] = peak_mib if watch else _max_rss_mib()
    if profile:
        result["profile"] = _layer_profile(net, train_step if train else lambda: net.forward(x), sync)
    return result


def _layer_profile(net, step, sync):
    """Seconds per layer and direction in one step, training or inference (each layer timed with a sync)."""
    step()                                          # warm-up: buffers allocated, caches filled
    times = defaultdict(float)
    for layer in net.layers:
        for direction in ("forward", "backward"):
            method = getattr(layer, direction)

            def timed(*args, _method=method, _key=f"{layer.name} {direction}", **kw):
                t0 = time.perf_counter()
                out = _method(*args, **kw)
                sync()
                times[_key] += time.perf_counter() - t0
                return out
            setattr(layer, direction, timed)
    step()
    return dict(sorted(times.items(), key=lambda kv: -kv[1]))


# ----------------------------------------------------------------------------- PyTorch

def run_torch(backbone, size, device, repeat, train):
    import torch
    from minifcn.models import build

    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = "cuda" if device == "gpu" else "cpu"
    ref = build("fcn8s", num_classes=21, backbone=backbone, seed=0)
    params = {k: torch.tensor(np.asarray(v), device=dev, requires_grad=k not in ref.frozen)
              for k, v in ref.params.items()}
    offsets = ref.crop_offsets
    x, labels = (torch.tensor(a, device=dev) for a in inputs(size))
    F = torch.nn.functional

    def fcn8s(x, train):
        h, taps = x, {}
        for name in (layer.name for layer in ref.body.layers):
            if name.startswith("conv"):
                h = F.conv2d(h, params[f"{name}.W"], params[f"{name}.b"], padding=100 if name == "conv1_1" else 1)
            elif name.startswith("relu"):
                h = F.relu(h, inplace=True)
            elif name.startswith("pool"):
                h = taps[name] = F.max_pool2d(h, 2, 2, ceil_mode=True)
            elif name in ("fc6", "fc7"):
                h = F.conv2d(h, params[f"{name}.W"], params[f"{name}.b"])
            else:
                h = F.dropout(h, 0.5, train)

        def crop(a, name, like):
            o = offsets[name]
            return a[:, :, o:o + like.shape[2], o:o + like.shape[3]]
        up = F.conv_transpose2d(F.conv2d(h, params["score_fr.W"], params["score_fr.b"]), params["upscore2.W"], stride=2)
        p4 = F.conv2d(taps["pool4"], params["score_pool4.W"], params["score_pool4.b"])
        up = F.conv_transpose2d(up + crop(p4, "score_pool4c", up), params["upscore_pool4.W"], stride=2)
        p3 = F.conv2d(taps["pool3"], params["score_pool3.W"], params["score_pool3.b"])
        up = F.conv_transpose2d(up + crop(p3, "score_pool3c", up), params["upscore8.W"], stride=8)
        return crop(up, "score", x)

    trainable = [p for p in params.values() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=1e-10, momentum=0.99, weight_decay=5e-4)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)

    def inference():
        with torch.no_grad():
            fcn8s(x, False)

    def train_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(fcn8s(x, True), labels, ignore_index=255, reduction="sum").backward()
        opt.step()

    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = {"inference": best_of(inference, repeat, sync),
              "train": best_of(train_step, repeat, sync) if train else float("nan")}
    result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if dev == "cuda" else _max_rss_mib()
    return result


# ----------------------------------------------------------------------------- memory meters

def _max_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- the run

def worker(args):
    backbone, size = args.case.split("@")
    if args.worker == "torch":
        result = run_torch(backbone, int(size), args.device, args.repeat, not args.no_train)
    else:
        result = run_minifcn(backbone, int(size), args.device, args.repeat, args.plain, args.profile, not args.no_train)
    print("RESULT " + json.dumps(result))


def spawn(framework, case, args):
    cmd = [sys.executable, __file__, "--worker", framework, "--case", case, "--device", args.device,
           "--repeat", str(args.repeat)] + [f"--{flag}" for flag in ("plain", "profile", "no-train")
                                             if getattr(args, flag.replace("-", "_"))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))})      # this checkout first, the caller's path kept
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        if "No module named 'torch'" in proc.stderr:        # a machine without PyTorch: minifcn's figures still count
            print(f"{case}: PyTorch is not installed here, so its columns are nan", file=sys.stderr)
        else:
            print(f"{framework} {case} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--cases", nargs="+", default=["vgg16@500", "vgg16-tiny@256"], type=case_arg,
                   help="BACKBONE@SIZE, BACKBONE vgg16 or vgg16-tiny (default: vgg16@500 vgg16-tiny@256)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per figure, the best kept (default 3)")
    p.add_argument("--plain", action="store_true", help="minifcn with its fast paths off")
    p.add_argument("--profile", action="store_true", help="minifcn's time per layer")
    p.add_argument("--no-train", action="store_true", help="time inference only")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--worker", choices=["minifcn", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ["CUPY_TF32"] = "0"       # TF32 off on CuPy's side too (its default, made explicit), before any import
    if args.worker:
        return worker(args)
    rows = []
    for case in args.cases:
        mine, theirs = spawn("minifcn", case, args), spawn("torch", case, args)
        rows.append((case, mine, theirs))
        print(_table([rows[-1]]).splitlines()[-1], flush=True)
        if args.profile and mine:
            print(_profile(case, mine["profile"]))
    table = _table(rows)
    print("\n" + table)
    failed = [case for case, mine, theirs in rows if mine is None]       # minifcn's figures are what RESULTS needs
    no_torch = [case for case, mine, theirs in rows if theirs is None]
    if args.append and failed:
        print(f"not appended to RESULTS.md: no figures for {', '.join(failed)} (see the errors above)", file=sys.stderr)
    elif args.append:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
        header = (f"\n## model_speed, {datetime.date.today()}, {args.device} ({machine}, numpy {np.__version__})\n\n"
                  f"`python benchmarks/model_speed.py {' '.join(sys.argv[1:])}`"
                  + (f" (no PyTorch figures for {', '.join(no_torch)}: see the run's errors)" if no_torch else "")
                  + "\n\n")
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write(header + table + "\n")


def _table(rows):
    nan = {"inference": float("nan"), "train": float("nan"), "peak_mib": float("nan")}
    lines = ["| FCN-8s, batch 1 | minifcn inference s | torch s | ratio | minifcn train step s | torch s | ratio "
             "| minifcn peak MiB | torch MiB | ratio | minifcn / torch inference ns per padded pixel |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, mine, theirs in rows:
        m, t = mine or nan, theirs or nan
        cells = [f"{m[k]:.3f} | {t[k]:.3f} | {m[k] / t[k]:.2f}" for k in ("inference", "train")]
        cells.append(f"{m['peak_mib']:.0f} | {t['peak_mib']:.0f} | {m['peak_mib'] / t['peak_mib']:.2f}")
        padded = (int(case.split("@")[1]) + 198) ** 2
        cells.append(f"{1e9 * m['inference'] / padded:.0f} / {1e9 * t['inference'] / padded:.0f}")
        lines.append(f"| {case.replace('@', ' @ ')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _profile(case, times):
    total = sum(times.values())
    top = list(times.items())[:24]
    return "\n".join([f"  {case}: where one step goes ({total:.2f} s in layers)"] +
                     [f"    {name:<22} {t:7.3f} s  {100 * t / total:5.1f} %" for name, t in top])


if __name__ == "__main__":
    main()
