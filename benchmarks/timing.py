"""What the benchmark scripts share: the best of several timed runs, and the peak of CuPy's memory pool."""
import time


def best_of(fn, repeat, sync=lambda: None):
    """The fastest of `repeat` runs of fn() in seconds, after one warm-up run; sync() waits for a GPU."""
    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def watch_cupy_peak(cp):
    """Wrap CuPy's allocator so that the most memory in use at once, above what is in use now, is recorded.

    Returns (peak_mib, restore): peak_mib() gives the figure so far, restore() puts the plain allocator back.
    """
    pool = cp.get_default_memory_pool()
    base, most = pool.used_bytes(), [0]

    def malloc(nbytes):
        mem = pool.malloc(nbytes)
        most[0] = max(most[0], pool.used_bytes() - base)
        return mem
    cp.cuda.set_allocator(malloc)
    return (lambda: most[0] / 2**20), (lambda: cp.cuda.set_allocator(pool.malloc))
