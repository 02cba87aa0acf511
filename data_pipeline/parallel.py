"""Running build jobs (one per clip or raw video) in worker processes."""

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Iterable, Iterator


def parallel_map(fn: Callable, tasks: Iterable, num_workers: int) -> Iterator:
    """fn over tasks, in order; in `num_workers` spawned processes when > 1 (spawn, not fork:
    the caller may hold JAX or threads that fork would copy in an undefined state)."""
    tasks = list(tasks)
    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=context) as pool:
        yield from pool.map(fn, tasks)
