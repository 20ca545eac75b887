"""Progress of long loops outside model.fit, as absl log lines with rate and ETA."""

import time

from absl import logging


def time_left(done, total, elapsed):
    """Seconds left when `done` of `total` units took `elapsed` seconds, at that mean rate."""
    return (total - done) * elapsed / done


def logged(iterable, name, total=None, every_seconds=10.0):
    """Yields from `iterable`, logging count, rate and (when `total` is known) ETA periodically."""
    start = last = time.time()
    count = 0
    for count, item in enumerate(iterable, start=1):
        yield item
        now = time.time()
        if now - last >= every_seconds:
            last = now
            rate = count / (now - start)
            eta = (f", ETA {time_left(count, total, now - start):.0f} s"
                   if total and total > count else "")
            logging.info("%s: %d%s batches, %.1f batches/s%s", name, count,
                         f"/{total}" if total else "", rate, eta)
    logging.info("%s: done, %d batches in %.1f s", name, count, time.time() - start)


def cardinality(dataset):
    """Number of batches if tf.data knows it, else None."""
    n = int(dataset.cardinality())
    return n if n >= 0 else None
