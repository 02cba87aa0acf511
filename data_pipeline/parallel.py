"""Running build jobs (one per clip or raw video) in worker processes."""

import concurrent.futures
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: a daemon thread ends this worker when its parent is gone. A
    SIGKILLed parent cannot stop its pool, and the workers hold the task queue's write end
    themselves, so without this they would wait for work forever."""

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def parallel_map(fn: Callable, tasks: Iterable, num_workers: int) -> Iterator:
    """fn over tasks, in order; in `num_workers` spawned processes when > 1 (spawn, not fork:
    the caller may hold JAX or threads that fork would copy in an undefined state). Workers
    exit by themselves when the calling process dies."""
    tasks = list(tasks)
    if num_workers <= 1 or len(tasks) <= 1:
        yield from map(fn, tasks)
        return
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=context, initializer=_exit_with_parent, initargs=(os.getpid(),)
    ) as pool:
        yield from pool.map(fn, tasks)
