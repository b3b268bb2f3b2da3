"""``compare --jobs N``: a seed's runs N at a time, each in a worker process on 1/N of the cores (and, with several
GPUs, on one GPU: worker i on GPU i mod n).

Small students do not use many cores: on this 2-core CPU the mfeat MLP trains as fast on one thread as on two, so two
one-thread runs at once take the time of one. Each run stays deterministic for its thread count, but a run on one
thread does not repeat a run on two bit for bit (the math kernels split their sums by thread), so ``--jobs`` is recorded
in each run's ``made_on`` (its ``threads``), and its figures are not those of ``--jobs 1``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

from cmcd_edge.distill import progress
from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.pipeline import run_distill
from cmcd_edge.distill.run_record import resume_refusal
from cmcd_edge.distill.teachers import TeacherOutputs
from cmcd_edge.errors import EnvironmentFailure

log = logging.getLogger(__name__)


def continues(run_dir: Path, cfg: DistillConfig) -> bool:
    """Whether ``run_dir`` holds a run a killed compare was in, made with this very config and recipe: it continues
    from its last epoch's checkpoint (else it starts over)."""
    return ((run_dir / "checkpoint.pt").exists() and not (run_dir / "metrics.json").exists()
            and resume_refusal(run_dir, cfg) is None)


def train_run(run_dir: Path, cfg: DistillConfig, teacher: TeacherOutputs, resume: bool) -> dict:
    """Train one run, or continue it (``resume``: :func:`continues`, asked by the compare); its metrics.json."""
    return run_distill(cfg, run_dir, resume=resume, force=not resume, teacher=teacher).metrics


def gpu_shares(visible: str | None, count: int) -> list[str] | None:
    """The GPUs the workers take in turn (worker i: entry i mod n, as its ``CUDA_VISIBLE_DEVICES``) where this process
    sees more than one (``visible``: its ``CUDA_VISIBLE_DEVICES``, ids or UUIDs; ``count``: torch's device count);
    None with one or none, where every worker sees what this process sees."""
    if count < 2:
        return None
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible is not None else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


class Jobs:
    """Worker processes (spawned: a forked copy of a process that ran torch's thread pool can hang), each on
    ``threads`` of the cores and, on a machine with several GPUs, on one of them in turn; they die with the compare,
    kill -9 included, so none trains on unseen."""

    def __init__(self, jobs: int, gpus: bool = True) -> None:
        """``gpus``: spread the workers over this machine's GPUs (False for ``--device cpu``)."""
        cores = torch.get_num_threads()  # torch's intra-op threads: the cores it may use (OMP_NUM_THREADS, affinity)
        if jobs > cores:
            log.warning("--jobs %d: more runs at a time than the %d cores torch uses here; they will share them, "
                        "each slower", jobs, cores)
        self.jobs, self.threads, self.broken = jobs, max(1, cores // jobs), False
        self.gpus = gpu_shares(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count()) if gpus else None
        if self.gpus:
            log.info("--jobs %d: workers take the GPUs %s in turn", jobs, ", ".join(self.gpus))
        ctx = multiprocessing.get_context("spawn")
        self.pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker,
                                        initargs=(self.threads, self.gpus, ctx.Value("i", 0)))

    def submit(self, run_dir: Path, cfg: DistillConfig, teacher_dir: Path, resume: bool) -> Future:
        """:func:`train_run` with the seed's teacher saved in ``teacher_dir``; the future's result is metrics.json."""
        return self.pool.submit(_train_there, run_dir, cfg, teacher_dir, resume)

    def result(self, fut: Future, run_dir: Path) -> dict:
        """``fut``'s metrics.json; a worker that died (killed: the out-of-memory killer picks the largest process,
        a worker) is one line that says how to go on, as every run keeps its last finished epoch."""
        try:
            return fut.result()
        except BrokenProcessPool:
            self.broken = True
            raise EnvironmentFailure(
                f"--jobs {self.jobs}: a worker process died (killed, e.g. by the out-of-memory killer) while this "
                f"compare waited for {run_dir.name}; finished runs and the others' last epochs are kept: rerun the "
                "same command to continue (with fewer --jobs if memory is short)") from None

    def close(self, finished: bool) -> None:
        """``finished``: wait for the workers to exit; else (an error, Ctrl-C) cancel what has not started and leave
        the rest to die with this process (each run keeps its last finished epoch for the next compare). A broken
        pool's workers are gone already: wait, so its queues close before this process exits."""
        self.pool.shutdown(wait=finished or self.broken, cancel_futures=not finished)


def take_gpu(gpus: list[str] | None, counter) -> None:
    """A new worker's GPU: the next of ``gpus`` by the shared ``counter`` (a multiprocessing Value), set before this
    process touches CUDA; nothing where ``gpus`` is None."""
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]


def _worker(threads: int, gpus: list[str] | None, counter) -> None:
    take_gpu(gpus, counter)
    with contextlib.suppress(OSError, AttributeError):  # Linux: SIGKILL when the compare's process ends
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the compare's to handle
    torch.set_num_threads(threads)
    progress.SHOW_BARS = False  # N bars on one terminal would overwrite each other; the compare logs each run
    logging.getLogger("cmcd_edge").setLevel(logging.WARNING)


def _train_there(run_dir: Path, cfg: DistillConfig, teacher_dir: Path, resume: bool) -> dict:
    return train_run(run_dir, cfg, TeacherOutputs.load(teacher_dir), resume)
