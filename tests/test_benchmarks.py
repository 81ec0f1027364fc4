"""The benchmark scripts run: each once, at a toy size, as a subprocess the way a user starts it; ops.py, which has
no toy size, runs its pieces in-process on toy shapes. (convert_speed.py is not run: its files are full-size VGG16s.)

They are the scripts a session with a lent GPU runs first (benchmarks/gpu_session.sh), with minutes of device
time for all of it, so a script that broke since its last run would waste them. model_speed.py also runs its
GPU path on tests/fake_cupy.py (put in place by a sitecustomize, since the script starts its own processes).
Timings are printed, never asserted.
"""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fake_cupy

ROOT = Path(__file__).resolve().parents[1]


def run(script, *args, fake_gpu_site=None, timeout=600):
    """python benchmarks/<script> ARGS -> its stdout; a failure shows the script's stderr."""
    path = [str(ROOT)] + ([str(fake_gpu_site)] if fake_gpu_site else []) + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, path)), "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, f"{script} {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc.stdout


def minifcn_columns(out, case):
    """The minifcn figures of a model_speed.py table row: inference s, train step s (PyTorch's may be nan)."""
    row = next(line for line in out.splitlines() if line.startswith(f"| {case} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    return float(cells[1]), float(cells[4])


@pytest.fixture
def fake_gpu_site(tmp_path):
    """A folder whose sitecustomize.py makes `import cupy` give the stand-in in every process started with it."""
    return fake_cupy.write_site(tmp_path)


@pytest.mark.parametrize("device", ["cpu", "gpu"])
def test_model_speed_times_minifcn_on_each_device(device, request):
    site = request.getfixturevalue("fake_gpu_site") if device == "gpu" else None
    out = run("model_speed.py", "--device", device, "--cases", "vgg16-tiny@48", "--repeat", "1", "--profile",
              fake_gpu_site=site)
    inference, step = minifcn_columns(out, "vgg16-tiny @ 48")
    assert 0 < inference < step                                  # figures, not nan; a step is more than a forward


def test_train_shapes_prints_the_table_of_four_metrics(tmp_path):
    out = run("train_shapes.py", "--models", "fcn32s", "--out", str(tmp_path), "--", "--iters", "2",
              "--image-size", "24", "--val-images", "2", "--warmup", "0")
    assert re.search(r"\| fcn32s \| 2 \|( [0-9.]+ \|){4}", out), out


def test_stride_ceiling_and_model_memory():
    out = run("stride_ceiling.py", "--size", "32", "--images", "2")
    mean_iu = {net: float(re.search(rf"\| {net} \| \d+ \|[^|]+\|[^|]+\| ([0-9.]+) \|", out).group(1))
               for net in ("FCN-8s", "FCN-16s", "FCN-32s")}
    assert mean_iu["FCN-8s"] > mean_iu["FCN-16s"] > mean_iu["FCN-32s"]      # a finer stride draws truer edges
    out = run("model_memory.py", "--backbone", "vgg16-tiny", "--size", "32", "--count-only")
    assert "counted:" in out and "measured:" in out


@pytest.mark.parametrize("case", ["vgg16-tiny", "vgg16-small@32", "vgg16@0", "vgg16@big"])
def test_model_speed_refuses_a_case_that_is_not_backbone_at_size(case):
    """Refused by argparse before any timing: a case without '@' used to end in a traceback from the table, after
    both workers had failed, and an unknown backbone in a row of nan."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "model_speed.py"), "--cases", case],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "BACKBONE@SIZE" in proc.stderr and "Traceback" not in proc.stderr


def test_ops_times_each_kind_of_op_at_a_toy_size(monkeypatch, capsys):
    """ops.py has no small size of its own (a run takes minutes), so its pieces run here in-process on toy shapes:
    every kind of op through minifcn's fast and plain paths and PyTorch's where it is installed, then the table."""
    import importlib.util
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_ops", ROOT / "benchmarks" / "ops.py")
    ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ops)
    try:
        import torch
    except ImportError:
        torch = None
    import numpy as np
    rng = np.random.default_rng(0)
    cases = [("conv", (1, 4, 9, 9), (5, 4, 3, 3), 1, 1), ("conv", (1, 4, 7, 7), (6, 4, 7, 7), 1, 0),
             ("deconv", (1, 3, 4, 4), (3, 3, 16, 16), 8, 0), ("pool", (1, 2, 9, 9), None, 2, 0),
             ("loss", (1, 5, 6, 6), None, None, None)]
    rows = []
    for kind, x_shape, W_shape, stride, pad in cases:
        x = rng.standard_normal(x_shape, dtype=np.float32)
        W = None if W_shape is None else rng.standard_normal(W_shape, dtype=np.float32)
        labels = rng.integers(0, 5, (1,) + x_shape[2:]) if kind == "loss" else None
        for plain in (True, False):                 # the plain ops and the fast path both run; the fast one is tabled
            fwd, both = ops.minifcn_fns(kind, x, W, stride, pad, labels, plain)
            row = [kind, ops.best_of(fwd, 1), ops.best_of(both, 1), ops.peak_mib(both, "cpu")]
            assert all(t > 0 for t in row[1:3]), (kind, plain, row)
        if torch is not None:
            tf, tb = ops.torch_fns(torch, kind, x, W, stride, pad, labels, "cpu")
            row += [ops.best_of(tf, 1), ops.best_of(tb, 1), ops.peak_mib(tb, "cpu", torch)]
        rows.append(row)
        assert kind in ops._fmt(row)
    table = ops._table(rows).splitlines()
    assert len(table) == 2 + len(cases) and all(line.count("|") == 10 for line in table)


@pytest.mark.parametrize("option", [("--arch", "fcn8"), ("--backbone", "vgg19")])
def test_model_memory_refuses_an_unknown_net_before_building_it(option):
    """A typo used to end in a traceback from models.build; now argparse names the choices."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "model_memory.py"), *option],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr, proc.stderr


def test_model_speed_without_pytorch_still_gives_minifcn_figures(tmp_path):
    """A machine without PyTorch: its columns are nan, said in one line; minifcn's are measured and count."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ModuleNotFoundError(\"No module named 'torch'\")\n"
        "sys.meta_path.insert(0, NoTorch())\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "model_speed.py"), "--cases", "vgg16-tiny@48",
                           "--repeat", "1"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "PyTorch is not installed here" in proc.stderr and "Traceback" not in proc.stderr
    inference, step = minifcn_columns(proc.stdout, "vgg16-tiny @ 48")
    assert inference > 0 and step > 0
