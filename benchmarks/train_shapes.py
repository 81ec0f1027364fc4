"""The bare `python -m minifcn.train` (FCN-8s, vgg16-tiny, built-in shapes, CPU), then FCN-16s and FCN-32s
under the same budget (the same settings and time budget, only --model differs: where the bare command's
8.5 minutes cut the 11,000 iterations, each net trains the iterations that fit it): the four metrics on the
val split at the end of each run, the iterations run, and the wall time of each (training and validation,
as a user sees it). Pass `-- --iters N` for the same number of iterations on any machine.

    python benchmarks/train_shapes.py [--models fcn8s fcn16s fcn32s] [--staged] [--out runs/bench] [--append]
                                      [-- EXTRA...]

Each run is `python -m minifcn.train --model M --out OUT/M --overwrite EXTRA...` in a subprocess, one after
another (never two at once: they would share the cores); a second call with the same --out replaces the
first's runs. Without --staged, the first, fcn8s with no EXTRA, is the bare command.

It prints one table row per model as each run ends, then the whole table: the iterations run (under the
budget, as many as fitted), pixel accuracy, mean accuracy, mean IU and frequency-weighted IU on the val split
at the last iteration, and the run's wall time. A row that says (exit N) is a run that failed; its own output,
above, says why. One run's noise is a few hundredths of mean IU: compare nets over several seeds
(`-- --seed 1`, ...) before calling one better.

--staged trains as the paper did, coarse to fine (net surgery): FCN-16s is FCN-32s for half the iterations,
then FCN-16s started from its checkpoint (--init) for the other half; FCN-8s is FCN-32s, FCN-16s and FCN-8s
for a third each; FCN-32s is one stage, as without --staged. Each stage is given its --iters, so the time
budget is off: the total is `-- --iters N` if given, else all 11,000 iterations, which on a slow 2-core
machine take several times the bare command's 8.5 minutes for each net. To compare staged with unstaged
training, give both the same `-- --iters N`.

--append adds the table to benchmarks/RESULTS.md with the date, the machine and the command.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")
STAGES = {"fcn32s": ["fcn32s"], "fcn16s": ["fcn32s", "fcn16s"], "fcn8s": ["fcn32s", "fcn16s", "fcn8s"],
          "fcn8s-atonce": ["fcn8s-atonce"]}


def run(model, out, extra):
    """Train one model; return (wall seconds, the last validation record of its log, return code)."""
    cmd = [sys.executable, "-m", "minifcn.train", "--out", str(out), "--overwrite"]     # its folders: rerun in place
    if model != "fcn8s":                      # fcn8s is the default: keep the bare command bare
        cmd += ["--model", model]
    cmd += extra
    print("$ " + " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    code = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    log = Path(out) / "log.jsonl"                 # none if the run failed before training
    records = [json.loads(line) for line in open(log) if line.strip()] if log.exists() else []
    val = [r for r in records if "mean_iu" in r]
    return wall, (val[-1] if val else {}), code


def run_staged(model, out, extra):
    """Train model coarse to fine, each stage from the last one's checkpoint, the iterations split evenly
    (the default 11,000 -> 3,667 + 3,667 + 3,666); return run()'s triple: the wall time
    of all stages, the last stage's validation with the iterations run in all, and the first non-zero
    return code."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from minifcn.train import DEFAULT_ITERS
    p = argparse.ArgumentParser(prog="train_shapes.py --staged", allow_abbrev=False)
    p.add_argument("--iters", type=int, default=DEFAULT_ITERS)
    for option in ("--init", "--resume", "--epochs"):
        p.add_argument(option, help=argparse.SUPPRESS)
    known, rest = p.parse_known_args(extra)
    if known.init or known.resume or known.epochs:
        p.error("--staged sets each stage's --init and --iters itself: pass --iters, not --init, --resume or --epochs")
    stages = STAGES[model]
    if known.iters < len(stages):
        p.error(f"--iters {known.iters} cannot be split over the {len(stages)} stages of {model}")
    wall, init, done = 0.0, [], 0
    for s, stage in enumerate(stages):
        iters = known.iters // len(stages) + (s < known.iters % len(stages))
        stage_out = Path(out) / stage
        t, rec, code = run(stage, stage_out, ["--iters", str(iters)] + init + rest)
        wall += t
        if code != 0:
            return wall, {}, code
        done += iters
        init = ["--init", str(stage_out / "checkpoint.npz")]
    return wall, dict(rec, iter=done), 0


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def table(rows):
    lines = ["| model | iterations | pixel acc | mean acc | mean IU | f.w. IU | wall (train + val) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for model, wall, rec, code in rows:
        cells = [f"{rec[k]:.3f}" if k in rec else "-" for k in METRICS]
        note = "" if code == 0 else f" (exit {code})"
        lines.append(f"| {model}{note} | {rec.get('iter', '-')} | " + " | ".join(cells) +
                     f" | {int(wall // 60)} min {wall % 60:.0f} s |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["fcn8s", "fcn16s", "fcn32s"],
                   choices=["fcn8s", "fcn16s", "fcn32s", "fcn8s-atonce"])
    p.add_argument("--staged", action="store_true", help="coarse to fine, as the paper trained (see above)")
    p.add_argument("--out", default="runs/bench", help="one sub-folder per model, replaced if it holds a run "
                   "(default runs/bench)")
    p.add_argument("--append", action="store_true", help="append the table to benchmarks/RESULTS.md")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="after --: options passed to every run")
    args = p.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    rows = []
    for model in args.models:
        wall, rec, code = (run_staged if args.staged else run)(model, Path(args.out) / model, extra)
        rows.append((model, wall, rec, code))
        print(table(rows[-1:]).split("\n")[-1], flush=True)
    result = table(rows)
    print("\n" + result)
    if args.append:
        import numpy as np
        machine = f"{cpu_name()}, {os.cpu_count()} cores, numpy {np.__version__}"
        command = " ".join(["python benchmarks/train_shapes.py", "--models", *args.models]
                           + ["--staged"] * args.staged + ["--out", args.out, "--append"] + (["--", *extra] if extra else []))
        how = ("staged: FCN-32s, then FCN-16s, then FCN-8s, each from the last one's checkpoint, the iterations "
               "split evenly" if args.staged else "only --model differs")
        header = (f"\n## train_shapes, {datetime.date.today()}, {machine}\n\n"
                  f"`{command}` (each: `python -m minifcn.train --model M {' '.join(extra)}`, the defaults "
                  f"otherwise; {how}; metrics on the val split at the last iteration)\n\n")
        with open(Path(__file__).with_name("RESULTS.md"), "a") as f:
            f.write(header + result + "\n")
    return max(code for *_, code in rows)


if __name__ == "__main__":
    raise SystemExit(main())
