"""The original's training data stream, replayed with Keras 2.0.8's own logic
(docs/fidelity.md, "Data stream under multiprocessing").

`Iterator208` is Keras 2.0.8's `preprocessing.image.Iterator` index logic (the base of the
original's `DMDirectoryIterator`): before every batch it reseeds NumPy's global state with
`seed + total_batches_seen`. `fit_generator(nb_worker=W, pickle_safe=True)` ran it in W
forked processes (`utils.data_utils.GeneratorEnqueuer`), each with its own copy of the
iterator as it was at the fork, all putting into one queue; every `fit_generator` and
`evaluate_generator` call forked anew from the parent's iterator, which never advanced.

Run as a script to measure the real multi-process stream:
    python tests/keras208_replay.py
"""
from __future__ import annotations

import multiprocessing
import time

import numpy as np


class Iterator208:
    """Keras 2.0.8's `Iterator._flow_index` and the `next()` of the original's iterators."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int | None):
        self.n, self.batch_size = n, batch_size
        self.batch_index = 0
        self.total_batches_seen = 0
        self.index_generator = self._flow_index(n, batch_size, shuffle, seed)

    def _flow_index(self, n, batch_size, shuffle, seed):
        self.batch_index = 0
        while True:
            if seed is not None:
                np.random.seed(seed + self.total_batches_seen)
            if self.batch_index == 0:
                index_array = np.arange(n)
                if shuffle:
                    index_array = np.random.permutation(n)
            current_index = (self.batch_index * batch_size) % n
            if n > current_index + batch_size:
                current_batch_size = batch_size
                self.batch_index += 1
            else:
                current_batch_size = n - current_index
                self.batch_index = 0
            self.total_batches_seen += 1
            yield index_array[current_index: current_index + current_batch_size]

    def next(self) -> np.ndarray:
        return next(self.index_generator)


def original_steps(n: int, batch_size: int) -> int:
    """The original trainers' `steps_per_epoch = int(n / batch) + 1`."""
    return int(n / batch_size) + 1


def round_robin_epoch(n: int, batch_size: int, workers: int, seed: int = 12345,
                      shuffle: bool = True, steps: int | None = None) -> list[np.ndarray]:
    """The batches of the first epoch when W forked copies of the same iterator feed
    the queue in turn (each copy starts at the parent's state: the first batch)."""
    steps = original_steps(n, batch_size) if steps is None else steps
    copies = [Iterator208(n, batch_size, shuffle, seed) for _ in range(workers)]
    out: list[np.ndarray] = []
    while len(out) < steps:
        for it in copies:
            out.append(it.next())
    return out[:steps]


def _worker(it: Iterator208, q, work_s: float) -> None:
    while True:
        batch = it.next()
        time.sleep(work_s)                       # decoding and augmenting the images
        q.put(batch)


def multiprocess_epoch(n: int, batch_size: int, workers: int, seed: int = 12345,
                       work_s: float = 0.002, max_queue_size: int = 10) -> list[np.ndarray]:
    """The first epoch as 2.0.8's GeneratorEnqueuer delivered it with
    `use_multiprocessing=True`: W forked processes, one bounded queue."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue(maxsize=max_queue_size)
    it = Iterator208(n, batch_size, True, seed)           # the parent's iterator
    procs = [ctx.Process(target=_worker, args=(it, q, work_s), daemon=True)
             for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        return [q.get(timeout=30) for _ in range(original_steps(n, batch_size))]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join()


def distinct(batches: list[np.ndarray]) -> int:
    return len(set(np.concatenate(batches).tolist()))


if __name__ == "__main__":
    n, bs = 600, 4
    for w in (1, 3, 4):
        rr = distinct(round_robin_epoch(n, bs, w))
        mp = [distinct(multiprocess_epoch(n, bs, w, seed=s)) for s in (1, 2, 3, 4, 5)]
        print(f"{n} images, batch {bs}, {w} workers, {original_steps(n, bs)} steps: "
              f"round robin {rr} distinct, forked processes {mp} distinct")
