"""Process-parallel map for the scaling fits' independent refits (grid starts, bootstrap resamples).

A refit is a few hundred BFGS iterations of a 5- or 9-parameter objective on ~100 runs: pure Python
and small numpy calls, so one process keeps one core busy and threads would not help (the GIL). The
report's scaling section is thousands of such refits; :func:`pmap` spreads them over worker processes.

Results do not depend on the number of jobs: every task computes what the serial loop computed, the
results come back in input order, and the callers reduce them in that order (same best start, same
resamples kept). ``tests/test_scaling_parallel.py`` checks that 1 and 2 jobs give identical fits.

The number of jobs: :func:`set_jobs` (the CLI's ``--jobs``), else the environment variable
``PERFMODEL_JOBS``, else the cores this process may run on. Workers are started with ``spawn`` (the
parent may have imported jax, whose threads make ``fork`` unsafe), once per process, and reused.
A spawned worker normally re-runs the parent's main script first, which needs the
``if __name__ == "__main__":`` guard; the tasks here are module-level functions of perfmodel, so the
workers are started without the main module (:func:`_main_hidden`) and a script or notebook without
the guard works too. Inside a worker :func:`pmap` runs serially: no nested pools.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import multiprocessing
import os
import signal
import sys
import types
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

JOBS_ENV = "PERFMODEL_JOBS"


class ParallelError(Exception):
    """The worker processes cannot run: a bad ``PERFMODEL_JOBS``, or a worker that died.

    Not a ``ValueError``/``RuntimeError``: the fits catch those as "this group cannot be fitted", and
    a machine problem must not read as a property of the runs.
    """


_jobs: int | None = None  # set_jobs()
_in_worker = False
_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_jobs = 0


def check_jobs(jobs, *, name: str = "jobs") -> int:
    """``jobs`` as a positive int, else ``ValueError`` naming ``name`` and the value."""
    try:
        n = int(jobs)
    except (TypeError, ValueError):
        n = None
    if n is None or isinstance(jobs, bool) or n < 1 or (isinstance(jobs, float) and jobs != n):
        raise ValueError(f"{name} must be a positive integer (worker processes), got {name}={jobs!r}")
    return n


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def set_jobs(jobs: int | None) -> None:
    """Use ``jobs`` worker processes from now on (``None``: back to ``PERFMODEL_JOBS`` or the cores)."""
    global _jobs
    _jobs = None if jobs is None else check_jobs(jobs)


def jobs() -> int:
    """The number of worker processes :func:`pmap` uses (1: serial, in this process)."""
    if _in_worker:
        return 1
    if _jobs is not None:
        return _jobs
    env = os.environ.get(JOBS_ENV)
    if env is not None and env.strip():
        try:
            return check_jobs(env.strip(), name=JOBS_ENV)
        except ValueError as err:
            raise ParallelError(str(err)) from None
    return available_cores()


def _worker_init() -> None:
    global _in_worker
    _in_worker = True
    # Ctrl-C reaches the whole process group; the parent handles it (below) and stops the workers,
    # so a worker should not print its own KeyboardInterrupt traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _get_pool(n: int) -> concurrent.futures.ProcessPoolExecutor:
    global _pool, _pool_jobs
    if _pool is None or _pool_jobs != n:
        shutdown()
        _pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=n, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
        _pool_jobs = n
    return _pool


def shutdown(*, kill: bool = False) -> None:
    """Stop the worker processes (``kill``: without letting them finish their current tasks)."""
    global _pool
    pool, _pool = _pool, None
    if pool is None:
        return
    if kill:
        for p in list(getattr(pool, "_processes", {}).values()):  # no public way to stop busy workers (py < 3.14)
            p.terminate()
    pool.shutdown(wait=not kill, cancel_futures=True)


@contextlib.contextmanager
def _main_hidden():
    """While workers start: ``__main__`` is an empty module, so that ``spawn`` does not re-run the caller's script.

    ``multiprocessing.spawn.get_preparation_data`` sends the main module's path (or ``-m`` name) to each
    new worker, which imports it before running any task. ``ProcessPoolExecutor`` starts its workers
    inside ``submit`` (in this thread), so hiding the main module around the submissions is enough.
    """
    main = sys.modules.get("__main__")
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        if main is not None:
            sys.modules["__main__"] = main
        else:
            del sys.modules["__main__"]


# Drop the pool before interpreter teardown: collected later, its manager thread's callback finds
# concurrent.futures half torn down and prints "Exception ignored ... 'NoneType' object has no attribute 'util'".
atexit.register(shutdown)


def pmap(fn: Callable[[T], R], items: Iterable[T], *, min_items: int = 2) -> list[R]:
    """``[fn(x) for x in items]``, spread over :func:`jobs` worker processes when there are ``min_items`` or more.

    ``fn`` must be a module-level function and ``items`` picklable. An exception in ``fn`` is raised
    here, as in the serial loop (the first one in input order).
    """
    xs = list(items)
    n = jobs()
    if n <= 1 or len(xs) < max(2, min_items):
        return [fn(x) for x in xs]
    pool = _get_pool(n)
    chunk = max(1, len(xs) // (4 * n))  # a few chunks per worker: balanced, little pickling
    try:
        with _main_hidden():
            results = pool.map(fn, xs, chunksize=chunk)  # submits every chunk (starting workers) before returning
        return list(results)
    except KeyboardInterrupt:
        shutdown(kill=True)  # stop now; the next pmap starts fresh workers
        raise
    except concurrent.futures.process.BrokenProcessPool as err:
        shutdown(kill=True)
        raise ParallelError(f"a worker process of the scaling fits died ({err}); out of memory? "
                            f"{JOBS_ENV}=1 (or --jobs 1) runs the fits in this process") from err
