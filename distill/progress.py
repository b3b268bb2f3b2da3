"""Progress of the long steps: a tqdm bar on a terminal, else a log line at most every ``every_s`` seconds (nohup,
a CI log, a job scheduler), with the time left at the pace so far."""

from __future__ import annotations

import contextlib
import logging
import time

log = logging.getLogger(__name__)

SHOW_BARS = True  # a tqdm bar on a terminal (off in compare --jobs workers, which share one)


class EpochProgress:
    """A tqdm bar on a terminal; where stderr is not one (nohup, a CI log, a job scheduler) the bar is off, so a log
    line reports the epoch at most every ``every_s`` seconds instead: a long teacher phase is not minutes of silence."""

    def __init__(self, name: str, epochs: int, start: int, every_s: float = 30.0) -> None:
        self.name, self.epochs, self.every_s = name, epochs, every_s
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if SHOW_BARS:  # (else no tqdm at all: even a disabled bar makes tqdm's multiprocessing lock, a semaphore a
            try:  # killed --jobs worker leaves for the resource tracker to warn of)
                from tqdm.auto import tqdm

                self.bar = tqdm(total=epochs, initial=start, desc=name, unit="ep", leave=False, disable=None)
            except ImportError:
                pass

    def update(self, epoch: int, loss: float, acc: float) -> None:
        if self.bar is not None and not self.bar.disable:
            self.bar.set_postfix(loss=f"{loss:.3f}", val_acc=f"{acc:.3f}")
            self.bar.update(1)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            log.info("%s: epoch %d/%d  loss %.4f  val accuracy %.4f  (%.0fs)", self.name, epoch, self.epochs, loss,
                     acc, now - self.t0)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def time_left(elapsed: float, done: int, total: int) -> str:
    """", about N min left" for the rest of ``total`` items at the pace of the ``done`` ones so far ("" when done):
    a long pass or comparison says when it will end, not only how far it is."""
    if done <= 0 or done >= total:
        return ""
    left = elapsed / done * (total - done)
    return f", about {left / 60:.0f} min left" if left >= 90 else f", about {left:.0f}s left"


class RowsProgress:
    """A pass over every row (the frozen teacher's outputs): a tqdm bar of rows on a terminal, else a log line at most
    every ``every_s`` seconds with the rows done, rows/s and the time left. A large pretrained teacher's pass over
    many rows on a CPU takes minutes to hours, which were silent."""

    def __init__(self, what: str, total: int, every_s: float = 30.0, show: bool = True) -> None:
        self.what, self.total, self.every_s, self.done, self.show = what, total, every_s, 0, show
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if show:
            with contextlib.suppress(ImportError):
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=what, unit="row", leave=False, disable=None)

    def __enter__(self) -> RowsProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def update(self, rows: int) -> None:
        self.done += rows
        if not self.show:
            return
        if self.bar is not None and not self.bar.disable:
            self.bar.update(rows)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s and self.done < self.total:
            self.last = now
            log.info("%s: %s of %s rows (%.0f%%), %.0f rows/s%s", self.what, f"{self.done:,}", f"{self.total:,}",
                     100 * self.done / self.total, self.done / max(now - self.t0, 1e-9),
                     time_left(now - self.t0, self.done, self.total))
