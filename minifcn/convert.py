"""Convert VGG16 (or trained FCN) weights to a minifcn .npz.

    python -m minifcn.convert SRC DST.npz [--format auto|torchvision|caffe|keras]

SRC: torchvision's vgg16-397923af.pth or vgg16_bn-6c64b313.pth (BatchNorm folded into the convolutions;
or any torch.save'd VGG16 state dict, alone or in a training checkpoint, keys
prefixed by nn.DataParallel's 'module.' or not), Caffe's
VGG_ILSVRC_16_layers.caffemodel / vgg16-fcn.caffemodel / fcn{32,16,8}s-*.caffemodel, or Keras'
vgg16_weights_tf_dim_ordering_tf_kernels.h5 (needs h5py). The format is told from the file's first
bytes unless --format says it. DST gets the weights (fc6 / fc7 as convolutions) and the preprocessing
the source expects; it is written to a temporary file first, so a failure never leaves half a DST.
An existing DST is replaced only if convert wrote it (--overwrite: whatever it is).
Nothing in SRC is ever run: see minifcn/weights/.
"""
import argparse
import os
import shlex
import sys
import time

from . import cli
from .models.fcn import body_of
from .weights import FORMATS, read_meta, read_weights, save_npz


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minifcn.convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="the weight file to read (.pth, .caffemodel or .h5)")
    parser.add_argument("dst", help="the minifcn .npz to write")
    parser.add_argument("--format", default="auto", choices=("auto",) + FORMATS,
                        help="the source format (default: told from the file)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a DST that convert did not write (one it wrote is replaced anyway)")
    args = parser.parse_args(argv)
    if os.path.exists(args.dst) and os.path.exists(args.src) and os.path.samefile(args.src, args.dst):
        parser.error("SRC and DST are the same file")
    cli.check_output_file(args.dst, "DST")                  # before reading SRC, which can take a minute
    if os.path.isfile(args.dst) and not args.overwrite and not _converted(args.dst):
        raise FileExistsError(f"DST {args.dst} exists and is not a file that convert wrote ({_what(args.dst)}); "
                              "converting would replace it. Give DST a new name (such as vgg16.npz), or pass "
                              "--overwrite to replace it")
    start = time.perf_counter()
    params, meta = read_weights(args.src, args.format)      # a bad file: cli.run ends the command with one line
    save_npz(args.dst, params, meta)
    count = sum(v.size for v in params.values())
    pre = meta["preprocessing"]
    print(f"{args.src} ({meta['source']}, {meta['arch']}) -> {args.dst}: {len(params)} arrays, "
          f"{count / 1e6:.1f} M parameters, {time.perf_counter() - start:.1f} s")
    print(f"  fc6.W {tuple(params['fc6.W'].shape)}, fc7.W {tuple(params['fc7.W'].shape)}"
          + (f", fc8.W {tuple(params['fc8.W'].shape)}" if "fc8.W" in params else ""))
    print(f"  preprocessing: {pre['channel_order']}, input 0-{pre['scale']:g}, mean {pre['mean']}, std {pre['std']}")
    print(f"next: {_next_command(args.dst, params, meta)}", file=sys.stderr)
    return 0


def _next_command(dst, params, meta):
    """The command that uses DST: train from it, with the --backbone (and --width) its channel counts fit, or, for
    a trained FCN, predict with it."""
    dst = shlex.quote(dst)
    if meta["arch"] != "vgg16":
        return f"python -m minifcn.predict {dst} IMAGE... --out DIR   (or evaluate it on its dataset)"
    fit = body_of({k: v.shape for k, v in params.items()}, "vgg16")
    if fit is None:
        return (f"none: its shapes are no VGG16 body's at any width (conv1_1 {params['conv1_1.W'].shape}, "
                f"fc6 {params['fc6.W'].shape}), so no FCN of minifcn's can start from it")
    backbone, width = fit
    body = f"--backbone {backbone}" + (f" --width {width:g}" if width != 1 else "")
    return f"python -m minifcn.train {body} --model fcn32s --init {dst} ..."


def _meta(path):
    """The metadata of the minifcn .npz at `path` ({} without any), None if it is no .npz; reads that entry only."""
    try:
        meta = read_meta(path)
    except (ValueError, OSError):
        return None
    return meta if isinstance(meta, dict) else {}


def _converted(path):
    """True if `path` is a weight file that convert wrote (its metadata names a source format): rewriting it is
    converting again. Anything else (a trained net's checkpoint, a .prototxt given by mistake) is the user's."""
    return (_meta(path) or {}).get("source") in FORMATS


def _what(path):
    """A few words on a file that convert did not write, for the message that refuses to replace it."""
    meta = _meta(path)
    if meta is None:
        return "not a minifcn .npz"
    return f"trained {meta['arch']} weights" if meta.get("arch") else "an .npz without convert's metadata"


if __name__ == "__main__":
    raise SystemExit(cli.run(main, "python -m minifcn.convert"))
