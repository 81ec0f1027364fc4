"""Data parallelism on the CPU: worker processes that share every batch, the way frameworks scale training.

Legend:  R workers (ranks 0..R-1), N images in a batch, P numbers in all the parameters together.

Why it pays here: the tiny VGG16's convolutions have 4 to 32 channels, too few for OpenBLAS to keep a second
core busy, so most of a training step is NumPy passes over memory on one core (with one OpenBLAS thread
or two, the bare run's step takes about the same time). Two processes with half of the batch each, one
OpenBLAS thread each, take a step in about 0.6 of the time (benchmarks/RESULTS.md). The full VGG16
gains nothing: its matrix products already use every core.

Why splitting a batch is exact: no layer of an FCN mixes the images of a batch (there is no batch
normalisation), so each image's scores, and its share of the loss's gradient, are the same whichever
process computes them. The loss of a batch is a sum over its labelled pixels (divided by their count for
the mean loss), and a gradient is linear in the loss, so the sum of the shares' gradients is the batch's.

How one iteration goes (R workers, ranks 0..R-1; a batch of N < R images uses the first N):

    trainer:  split the batch's N images into R shares (np.array_split) and send share r to worker r
    worker r: forward, the per-pixel loss SUMMED over its labelled pixels, backward; write its gradients
              into its own block of shared memory; answer (its summed loss, its count of labelled pixels)
    trainer:  add the R gradient blocks in rank order (deterministic), divide by the batch's labelled
              pixels for the mean loss (not for the sum loss), and take the optimiser step

The parameters themselves live in one more block of shared memory: every worker's net and the trainer's
net hold views of the same arrays, so the optimiser's in-place update reaches every worker, and there is
nothing to send back. (So nothing may replace the trainer's arrays afterwards: net.to, net.astype and
net.load_weights make new ones, which the workers would never see.) The update equals one process's on
the whole batch up to float rounding; dropout masks differ (each worker draws its own).

    dp = DataParallel(net, workers=2)        # net.params now live in shared memory
    loss, grads = dp.step(x, labels, "mean", dropout_seeds)
    optimizer.step(grads, lr)                # in place, seen by every worker
    dp.close()
"""
import multiprocessing as mp
import os
import traceback
from contextlib import contextmanager

import numpy as np

from . import cli, models
from .data.transforms import VOID
from .layers import Dropout
from .ops import softmax_cross_entropy

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",   # one BLAS thread per worker
                    "VECLIB_MAXIMUM_THREADS")


def cores():
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def layout(params):
    """{key: (offset, shape)} placing every parameter one after another in one flat block; and its length."""
    places, offset = {}, 0
    for key, value in params.items():
        places[key] = (offset, tuple(value.shape))
        offset += int(value.size)
    return places, offset


def views(block, places, dtype):
    """{key: array} views into a shared block laid out by `layout` (no copy)."""
    flat = np.frombuffer(block, dtype=dtype)
    return {k: flat[o:o + int(np.prod(shape))].reshape(shape) for k, (o, shape) in places.items()}


@contextmanager
def _one_blas_thread_in_children():
    """Inside the block, THREAD_VARIABLES are "1", so that each child process started there runs one BLAS thread
    (a child reads them once, at start-up); afterwards this process's own settings are put back."""
    saved = {v: os.environ.get(v) for v in THREAD_VARIABLES}
    os.environ.update({v: "1" for v in THREAD_VARIABLES})
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                del os.environ[v]
            else:
                os.environ[v] = old


class DataParallel:
    """R worker processes, each with a replica of `net` whose parameters are shared with it (see the top)."""

    def __init__(self, net, workers):
        if net.device != "cpu":
            raise ValueError("data parallelism with worker processes is for the CPU; on a GPU use one process "
                             "(--workers 1)")
        if workers < 2:
            raise ValueError(f"DataParallel needs at least 2 workers, got {workers}")
        ctx = mp.get_context("spawn")            # a fresh interpreter: forking a process that runs OpenBLAS can hang
        self.dtype = np.dtype(net.params["conv1_1.W"].dtype)
        ctype = np.ctypeslib.as_ctypes_type(self.dtype)
        self.places, total = layout(net.params)
        self.trainable = [k for k in net.params if k not in net.frozen]
        param_block = ctx.RawArray(ctype, total)                                   # (P,) parameters
        for key, view in views(param_block, self.places, self.dtype).items():
            view[...] = net.params[key]
            net.params[key] = view               # the trainer's net (and its optimiser) now update the block
        grad_blocks = [ctx.RawArray(ctype, total) for _ in range(workers)]       # R x (P,) gradients
        self.grads = [views(block, self.places, self.dtype) for block in grad_blocks]
        # what models.build needs to make the same net (its weights then come from the shared block)
        config = {k: v for k, v in net.config().items() if k in ("num_classes", "backbone", "width", "dropout",
                                                                 "learnable_upsampling")}
        self.pipes, self.processes = [], []
        with _one_blas_thread_in_children():
            try:
                for rank in range(workers):
                    mine, theirs = ctx.Pipe()
                    proc = ctx.Process(target=_worker, daemon=True, name=f"minifcn-worker-{rank}",
                                       args=(net.arch, config, self.places, self.dtype, self.trainable, param_block,
                                             grad_blocks[rank], theirs))
                    self.pipes.append(mine)
                    self.processes.append(proc)
                    proc.start()
                    theirs.close()               # the child's end: only the child holds it open now
                for rank in range(workers):
                    self._answer(rank)           # "ready", or the worker's error
            except BaseException:
                self.close()
                raise

    @property
    def workers(self):
        return len(self.pipes)

    def step(self, x, labels, reduction="mean", dropout_seeds=()):
        """Forward and backward of x (N, 3, H, W) / labels (N, H, W) over the workers -> (loss, grads).

        reduction: "mean" over the batch's labelled pixels or "sum"; dropout_seeds[r]: the seeds of worker
        r's dropout layers for this iteration. grads: {key: array} of the trainable parameters, new arrays.
        If anything goes wrong mid-step (a worker's error, Ctrl-C), the workers are closed: their answers
        and gradient blocks would be out of step with the next call.
        """
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        if not self.pipes:
            raise RuntimeError("this DataParallel is closed (after close() or a failed step); make a new one")
        R = min(self.workers, len(x))                 # an epoch's last batch may be short
        try:
            for rank, (xs, ys) in enumerate(zip(np.array_split(x, R), np.array_split(labels, R))):
                try:
                    self.pipes[rank].send((xs, ys, dropout_seeds[rank] if dropout_seeds else ()))
                except OSError:                       # BrokenPipeError and the like: the worker is gone
                    raise self._stopped(rank) from None
            answers = [self._answer(rank) for rank in range(R)]                 # [(summed loss, pixels)]
        except BaseException:
            self.close()
            raise
        loss = sum(a[0] for a in answers)
        pixels = sum(a[1] for a in answers)
        grads = {}
        for key in self.trainable:
            g = self.grads[0][key].copy()
            for rank in range(1, R):
                g += self.grads[rank][key]
            grads[key] = g
        if reduction == "mean" and pixels:
            scale = 1.0 / pixels
            loss *= scale
            for g in grads.values():
                g *= self.dtype.type(scale)
        return loss, grads

    def _answer(self, rank):
        """Worker rank's next reply, less its "ok" or "ready"; its error, or its death, is raised here."""
        try:
            reply = self.pipes[rank].recv()
        except (EOFError, OSError):                  # closed, or reset by a killed worker
            raise self._stopped(rank) from None
        if reply[0] == "error":
            _, trace, message = reply
            if message is not None:         # a mistake in the input (a label outside the classes): one line, as
                raise ValueError(f"data-parallel worker {rank}: {message}")       # one process would say it
            raise RuntimeError(f"data-parallel worker {rank} failed:\n{trace}")
        return reply[1:]

    def _stopped(self, rank):
        """The error to raise for a worker that is gone (waits a second for its exit code)."""
        self.processes[rank].join(timeout=1)
        return RuntimeError(f"data-parallel worker {rank} stopped (exit code {self.processes[rank].exitcode}); "
                            "run with --workers 1 to see the error in this process")

    def close(self):
        """Stop the workers (safe to call twice, and after a worker died)."""
        for pipe in self.pipes:
            try:
                pipe.send(None)
            except OSError:
                pass
        for proc in self.processes:
            if proc.pid is None:                      # never started
                continue
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()
        for pipe in self.pipes:
            pipe.close()
        self.pipes, self.processes = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _worker(arch, config, places, dtype, trainable, param_block, grad_block, pipe):
    """One worker: a replica of the net on the shared parameters; answers one message per iteration."""
    try:
        net = models.build(arch, **config)
        for key, view in views(param_block, places, dtype).items():
            net.params[key] = view
        net.input_grad = False                   # the image needs no gradient
        grads = views(grad_block, places, dtype)
        dropouts = [layer for layer in net.layers if isinstance(layer, Dropout) and layer.p > 0]
        np.seterr(over="ignore", invalid="ignore")   # a diverging loss: the trainer stops and explains, no warnings first
        pipe.send(("ready",))
        while (message := pipe.recv()) is not None:
            x, labels, seeds = message
            for layer, seed in zip(dropouts, seeds):
                layer.rng = np.random.default_rng(seed)
            scores = net.forward(x, train=True)                                   # (n, K, H, W)
            loss, dscores = softmax_cross_entropy(scores, labels, VOID, reduction="sum")
            net.backward(dscores)
            for key in trainable:
                np.copyto(grads[key], net.grads[key])
            pipe.send(("ok", loss, int(np.count_nonzero(labels != VOID))))
    except (KeyboardInterrupt, EOFError, ConnectionError):
        pass                                     # Ctrl-C reaches every process (the trainer reports it), or the trainer is gone
    except Exception as e:                       # noqa: BLE001 - sent to the trainer, which raises it
        try:
            pipe.send(("error", traceback.format_exc(), str(e) if cli.for_the_user(e) else None))
        except OSError:
            pass

