"""Measuring: median and interleaved wall times, peak memory (CUDA or the process's
resident high-water mark), and calls in a fresh process whose peak belongs to them alone."""
import time

import numpy as np
import torch


def median_time(fn, steps=5, warmup=2, sync=None):
    """Median wall time of ``fn()`` in seconds after ``warmup`` untimed calls."""
    return interleaved_times([fn], steps=steps, warmup=warmup, sync=sync)[0][0]


def interleaved_times(fns, steps=5, warmup=1, sync=None):
    """Median wall time of each of ``fns``, timed in alternating rounds, and per-round ratios.

    Round r runs every function once (in rotated order), so a slow spell of a
    shared machine hits all of them alike; ``ratios[k]`` is the median over
    rounds of ``time(fns[k]) / time(fns[0])``, steadier than a ratio of medians
    measured one after the other. Returns ``(medians, ratios)``.
    """
    times = [[] for _ in fns]
    for r in range(warmup + steps):
        for k in [(r + i) % len(fns) for i in range(len(fns))]:
            start = time.perf_counter()
            fns[k]()
            if sync is not None:
                sync()
            if r >= warmup:
                times[k].append(time.perf_counter() - start)
    medians = [float(np.median(t)) for t in times]
    ratios = [float(np.median([a / b for a, b in zip(t, times[0])])) for t in times]
    return medians, ratios


def _proc_status_mib(field):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field + ':'):
                return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def reset_peak_rss():
    """Start a new resident-memory high-water mark (Linux); returns the current RSS in MiB.

    ``getrusage``'s maximum survives fork+exec, so a child process would report
    its parent's peak; ``VmHWM`` belongs to this process and can be reset.
    """
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')
    return _proc_status_mib('VmRSS')


def peak_rss_mib():
    """Resident-memory high-water mark since the last :func:`reset_peak_rss`, in MiB."""
    return _proc_status_mib('VmHWM')


def time_with_peak_memory(fn, device, steps=5, warmup=2, above_current=False):
    """Median time of ``fn()`` (seconds) and the memory its calls reach (MiB).

    On a GPU: the peak allocated CUDA memory, or its excess over what was allocated
    before with ``above_current``. On the CPU: the growth of the process's peak
    resident memory (meaningful in a fresh process).
    """
    cuda = torch.device(device).type == 'cuda'
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() if above_current else 0
    else:
        base = reset_peak_rss()
    seconds = median_time(fn, steps=steps, warmup=warmup, sync=torch.cuda.synchronize if cuda else None)
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if cuda else peak_rss_mib() - base
    return seconds, peak


def _call_and_put(fn, args, queue):
    from plugins.host.allocator import keep_freed_host_memory

    keep_freed_host_memory()  # the allocator setting of the benchmark's own process
    queue.put(fn(*args))


def call_in_subprocess(fn, *args):
    """``fn(*args)`` in a fresh (spawned) process, so its peak memory belongs to it alone.

    ``fn`` must be importable (module level). A child that dies raises a
    RuntimeError naming ``fn`` instead of blocking on its result.
    """
    import multiprocessing
    import queue as queue_module

    ctx = multiprocessing.get_context('spawn')
    results = ctx.Queue()
    proc = ctx.Process(target=_call_and_put, args=(fn, args, results))
    proc.start()
    while True:
        try:
            result = results.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not proc.is_alive() and results.empty():
                raise RuntimeError('{} failed in its subprocess (exit code {})'.format(
                    fn.__name__, proc.exitcode))
    proc.join()
    return result
