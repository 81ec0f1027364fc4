"""Time and memory of what `python -m minifcn.convert` does (read_weights, then save_npz) on full-size VGG16 files
(138 M parameters, 553 MB = 528 MiB of float32).

    python benchmarks/convert_speed.py [--formats torchvision legacy caffe caffe-v1 keras] [--dir DIR]

Writes random full-size VGG16 files into a temporary folder (inside DIR if given; removed at the end; about
1.1 GB free is needed, one source file and its .npz at a time): torch.save's zip and legacy layouts (needs
torch), a caffemodel in both layer fields (written by the small encoder below, in the layout Caffe writes:
packed floats) and a Keras-layout .h5 (needs h5py). A format whose writer's package is missing is skipped.
Each conversion then runs in a fresh process. One line per format:

  s (read s)    the conversion's wall time, and of it the reading alone (the rest is writing the .npz)
  traced peak   the peak of traced allocations (tracemalloc counts NumPy's buffers and bytearrays: the copies
                of the weights held at once), and that as a multiple of the weights' size
  max RSS       the process's peak resident memory (Python and the imports included)

There is no --append: RESULTS.md's entries for it are entered by hand.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from minifcn.weights.vgg16 import BLOCKS  # noqa: E402

CHANNELS = {1: 64, 2: 128, 3: 256, 4: 512, 5: 512}


def vgg16_shapes():
    """[(minifcn layer, W shape as the frameworks store fc layers (2-D), b shape)] for full VGG16."""
    out, c = [], 3
    for b, n in BLOCKS:
        for i in range(1, n + 1):
            out.append((f"conv{b}_{i}", (CHANNELS[b], c, 3, 3), (CHANNELS[b],)))
            c = CHANNELS[b]
    return out + [("fc6", (4096, 512 * 49), (4096,)), ("fc7", (4096, 4096), (4096,)), ("fc8", (1000, 4096), (1000,))]


def random_weights(seed=0):
    rng = np.random.default_rng(seed)
    return [(name, rng.standard_normal(w, np.float32), rng.standard_normal(b, np.float32))
            for name, w, b in vgg16_shapes()]


# ----------------------------------------------------------------------------- writers

def write_torch(path, weights, legacy):
    import torch
    from minifcn.weights.torchvision import NAMES
    sd = {}
    for name, W, b in weights:
        sd[NAMES[f"{name}.W"]], sd[NAMES[f"{name}.b"]] = torch.from_numpy(W), torch.from_numpy(b)
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)


def _varint(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number, wire, payload):
    tag = _varint(number << 3 | wire)
    return tag + (_varint(len(payload)) + payload if wire == 2 else payload)


def write_caffe(path, weights, v1):
    """NetParameter with `layer` (field 100) or V1 `layers` (field 2, legacy 4-D blob shapes)."""
    with open(path, "wb") as f:
        f.write(_field(1, 2, b"VGG_ILSVRC_16_layers"))
        for name, W, b in weights:
            blobs = []
            for a in (W, b):
                shape = ((1, 1) + a.shape if a.ndim == 2 else (1, 1, 1) + a.shape if a.ndim == 1 else a.shape)
                head = (b"".join(_field(n + 1, 0, _varint(d)) for n, d in enumerate(shape)) if v1
                        else _field(7, 2, _field(1, 2, b"".join(_varint(d) for d in a.shape))))
                blobs.append(head + _field(5, 2, a.astype("<f4").tobytes()))
            kind = ("InnerProduct" if name.startswith("fc") else "Convolution")
            if v1:
                layer = _field(4, 2, name.encode()) + _field(5, 0, _varint(14 if kind == "InnerProduct" else 4))
                layer += b"".join(_field(6, 2, blob) for blob in blobs)
                f.write(_field(2, 2, layer))
            else:
                layer = _field(1, 2, name.encode()) + _field(2, 2, kind.encode())
                layer += b"".join(_field(7, 2, blob) for blob in blobs)
                f.write(_field(100, 2, layer))


def write_keras(path, weights):
    import h5py
    from minifcn.weights.keras import NAMES
    keras_name = {v: k for k, v in NAMES.items()}
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [keras_name[n].encode() for n, _, _ in weights]
        for name, W, b in weights:
            k = keras_name[name]
            W = W.transpose(2, 3, 1, 0) if W.ndim == 4 else W.T      # HWIO; Dense (in, out) (flatten order aside)
            g = f.create_group(k)
            g.attrs["weight_names"] = [f"{k}_W_1:0".encode(), f"{k}_b_1:0".encode()]
            g[f"{k}_W_1:0"], g[f"{k}_b_1:0"] = W, b


WRITERS = {"torchvision": lambda p, w: write_torch(p, w, False), "legacy": lambda p, w: write_torch(p, w, True),
           "caffe": lambda p, w: write_caffe(p, w, False), "caffe-v1": lambda p, w: write_caffe(p, w, True),
           "keras": write_keras}
SUFFIX = {"torchvision": ".pth", "legacy": ".pth", "caffe": ".caffemodel", "caffe-v1": ".caffemodel", "keras": ".h5"}


# ----------------------------------------------------------------------------- one conversion, measured

def peak_rss_mb():
    """This process's peak resident memory. Linux's ru_maxrss survives exec (it would count the parent
    that wrote the files), so read the address space's own high-water mark where there is one."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(src, dst):
    import tracemalloc
    from minifcn.weights import read_weights, save_npz
    tracemalloc.start()
    start = time.perf_counter()
    params, meta = read_weights(src)
    read = time.perf_counter() - start
    save_npz(dst, params, meta)
    seconds = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"rc": 0, "seconds": seconds, "read_s": read, "traced_peak_mb": traced / 2**20,
                      "maxrss_mb": peak_rss_mb()}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--formats", nargs="+", default=list(WRITERS), choices=list(WRITERS))
    p.add_argument("--dir", default=None, help="make the temporary folder here (default: the system's)")
    p.add_argument("--child", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    weights = random_weights()
    nbytes = sum(W.nbytes + b.nbytes for _, W, b in weights)
    print(f"VGG16: {nbytes / 2**20:.0f} MiB of float32 weights")
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for fmt in args.formats:
            src, dst = os.path.join(d, "vgg16-" + fmt + SUFFIX[fmt]), os.path.join(d, fmt + ".npz")
            try:
                WRITERS[fmt](src, weights)
            except ImportError as e:
                print(f"{fmt:12s} skipped ({e})")
                continue
            out = subprocess.run([sys.executable, __file__, "--child", src, dst], capture_output=True, text=True)
            r = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
            if not r or r["rc"] != 0:
                print(f"{fmt:12s} FAILED\n{out.stdout}\n{out.stderr}")
                continue
            print(f"{fmt:12s} {r['seconds']:6.2f} s (read {r['read_s']:.2f} s)   "
                  f"traced peak {r['traced_peak_mb']:6.0f} MiB "
                  f"({r['traced_peak_mb'] * 2**20 / nbytes:.2f} x the weights)   max RSS {r['maxrss_mb']:6.0f} MiB")
            os.remove(src)
            os.remove(dst)


if __name__ == "__main__":
    main()
