"""compare --jobs: a seed's runs in worker processes, each on its share of the cores."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

import pytest
import torch

from cmcd_edge.distill.compare import run_compare
from cmcd_edge.distill.compare_jobs import Jobs, gpu_shares, take_gpu
from cmcd_edge.errors import UserError
from tests.helpers import assert_one_line_error


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one core: --jobs 2 would give each run the same one thread")
def test_compare_jobs_trains_runs_in_workers_as_one_thread_runs_would(base, tmp_path):
    """Two one-thread runs at once take the time of one two-thread run for a small student on a 2-core CPU (7.4 s for
    both against 8 s each). Each worker's run is the run a one-thread process makes: the same bytes."""
    cfg = dataclasses.replace(base, teacher_cache=str(tmp_path / "teachers"))  # one teacher for both compares
    r2 = run_compare(cfg, ["kd", "supervised"], 2, tmp_path / "jobs2", upper_bound=False, jobs=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r1 = run_compare(cfg, ["kd", "supervised"], 2, tmp_path / "one", upper_bound=False)
    finally:
        torch.set_num_threads(threads)
    for m in ("kd", "supervised"):
        assert r2["methods"][m]["test_accuracy"]["runs"] == r1["methods"][m]["test_accuracy"]["runs"]
    for run in (tmp_path / "jobs2" / "runs").iterdir():
        assert (run / "student.safetensors").read_bytes() == \
            (tmp_path / "one" / "runs" / run.name / "student.safetensors").read_bytes()
        assert json.loads((run / "run.json").read_text())["made_on"]["threads"] == 1
    assert [m["threads"] for m in r2["made_on"]] == [1]
    assert "1 thread)" in (tmp_path / "jobs2" / "results.md").read_text().splitlines()[0]


def test_compare_jobs_keeps_finished_runs_in_their_order(base, tmp_path):
    """--extend with --jobs: kept runs and runs trained in the workers are reported in the method order."""
    out = tmp_path / "cmp"
    run_compare(base, ["supervised"], 1, out, upper_bound=False)
    r = run_compare(base, ["kd", "supervised", "fitnet"], 1, out, upper_bound=False, extend=True, jobs=2)
    assert list(r["methods"]) == ["kd", "supervised", "fitnet"]
    sup = json.loads((out / "runs" / "supervised-s0" / "metrics.json").read_text())
    assert r["methods"]["supervised"]["test_accuracy"]["runs"] == [sup["test_accuracy"]]


def test_compare_jobs_passes_a_runs_error_on(base, tmp_path):
    with pytest.raises(UserError, match="--jobs 0: must be >= 1"):
        run_compare(base, ["kd"], 1, tmp_path / "cmp", jobs=0)
    # a run that fails in a worker fails the compare with its own message
    cfg = dataclasses.replace(base, student="cnn2d")  # the target is a vector view: no cnn2d student for it
    with pytest.raises(UserError, match="--student cnn2d for --target tgt"):
        run_compare(cfg, ["kd", "fitnet"], 1, tmp_path / "cmp2", upper_bound=False, jobs=2)


def test_compare_cli_refuses_jobs_below_one(cli, base, tmp_path):
    res = cli("compare", "--data", base.data, "--source", "src", "--target", "tgt", "--methods", "kd", "--seeds", "1",
              "--out", tmp_path / "cmp", "--jobs", "0")
    assert_one_line_error(res, 2, "--jobs 0: must be >= 1")
    assert not (tmp_path / "cmp").exists()


def test_jobs_beyond_the_cores_says_they_share_them(caplog):
    from cmcd_edge.distill.compare_jobs import Jobs

    cores = torch.get_num_threads()
    jobs = Jobs(cores + 1)
    jobs.close(finished=True)
    assert jobs.threads == 1
    assert f"--jobs {cores + 1}: more runs at a time than the {cores} cores torch uses here" in caplog.text


def test_compare_jobs_killed_leaves_no_worker_and_continues(base, tmp_path):
    """kill -9 of a --jobs compare: its workers die with it (PR_SET_PDEATHSIG; was a worker left training on unseen,
    holding its run folder), and the same command continues the killed runs from their checkpoints, ending as an
    uninterrupted --jobs 2 compare."""
    import os
    import signal
    import subprocess
    import time

    from tests.distill.test_compare import _cmp_args

    def args(out):
        a = _cmp_args(base, out)
        a[a.index("kd")] = "kd,fitnet"
        return [*a, "--jobs", "2"]

    (tmp_path / "ref").mkdir()
    ref = subprocess.run(args(tmp_path / "ref" / "cmp"), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    (tmp_path / "k").mkdir()
    out = tmp_path / "k" / "cmp"
    proc = subprocess.Popen(args(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    hist = out / "runs" / "fitnet-s0" / "history.csv"  # the second run: kd's may have finished by then
    deadline = time.time() + 120
    while not hist.exists() and time.time() < deadline:
        time.sleep(0.01)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    os.kill(proc.pid, signal.SIGKILL)  # the compare alone, as an OOM killer would
    proc.wait()
    time.sleep(1.0)
    alive = [w for w in workers if os.path.exists(f"/proc/{w}") and open(f"/proc/{w}/stat").read().split()[2] != "Z"]
    assert len(workers) >= 2 and alive == []
    assert not (hist.parent / "metrics.json").exists(), "the run finished before the kill"
    res = subprocess.run(args(out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "fitnet-s0: continuing the killed run from its checkpoint" in res.stderr, res.stderr
    for m in ("kd", "fitnet"):
        assert (out / "runs" / f"{m}-s0" / "student.safetensors").read_bytes() == \
            (tmp_path / "ref" / "cmp" / "runs" / f"{m}-s0" / "student.safetensors").read_bytes()


def test_compare_jobs_worker_killed_is_one_line_and_the_rerun_continues(base, tmp_path):
    """A worker killed on its own (the out-of-memory killer picks the largest process: a worker) used to end the
    compare in 'internal error: BrokenProcessPool: A process in the process pool was terminated abruptly ...'."""
    import os
    import signal
    import subprocess
    import time

    from tests.distill.test_compare import _cmp_args

    args = [*_cmp_args(base, tmp_path / "cmp"), "--jobs", "2"]
    args[args.index("kd")] = "kd,fitnet"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    hist = tmp_path / "cmp" / "runs" / "fitnet-s0" / "history.csv"
    deadline = time.time() + 120
    while not hist.exists() and time.time() < deadline:
        time.sleep(0.01)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    workers = [c for c in children if b"spawn_main" in open(f"/proc/{c}/cmdline", "rb").read()]
    assert workers, children
    os.kill(int(workers[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("Error")]
    assert len(lines) == 1 and "--jobs 2: a worker process died" in lines[0] and "rerun the same command" in lines[0], err
    assert "Traceback" not in err and "BrokenProcessPool" not in err and "leaked semaphore" not in err, err
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "cmp" / "results.json").exists()


@pytest.mark.parametrize("visible,count,want", [
    (None, 0, None), (None, 1, None), ("3", 1, None),  # one GPU or none: every worker sees what the compare sees
    (None, 2, ["0", "1"]), ("2,3", 2, ["2", "3"]), (" 5, 7 ,", 2, ["5", "7"]),
    ("GPU-aa,GPU-bb,GPU-cc", 3, ["GPU-aa", "GPU-bb", "GPU-cc"]),
    ("1,2,3", 2, ["1", "2"]),  # torch counts fewer (an id that does not exist ends the list)
    ("0", 2, ["0", "1"]),  # the variable names fewer than torch counts: take torch's count
])
def test_gpu_shares_picks_each_workers_gpu_from_what_the_compare_sees(visible, count, want):
    """Was: every --jobs worker trained on cuda:0, so on a 4-GPU machine --jobs 4 crowded one GPU and left three idle."""
    assert gpu_shares(visible, count) == want


_BARRIER = None


def _init(gpus, counter, barrier) -> None:
    global _BARRIER
    take_gpu(gpus, counter)
    _BARRIER = barrier


def _visible(_: int) -> tuple[int, str | None]:
    _BARRIER.wait(timeout=120)  # each task waits for the other: two tasks, two workers
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def test_workers_take_the_gpus_in_turn():
    """take_gpu in the pool's initializer: each spawned worker sets its own CUDA_VISIBLE_DEVICES (no GPU needed)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=_init,
                             initargs=(["7", "9"], ctx.Value("i", 0), ctx.Barrier(2))) as pool:
        seen = dict(pool.map(_visible, range(2)))
    assert len(seen) == 2 and sorted(seen.values()) == ["7", "9"]
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=_init,
                             initargs=(None, ctx.Value("i", 0), ctx.Barrier(1))) as pool:
        assert pool.submit(_visible, 0).result()[1] == os.environ.get("CUDA_VISIBLE_DEVICES")  # None: left as it is


def test_jobs_spread_over_gpus_only_for_a_gpu_compare(monkeypatch):
    """--device cpu leaves the workers' CUDA_VISIBLE_DEVICES alone (and says nothing of GPUs) on a machine with several."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")
    for gpus, want in ((True, ["4", "5"]), (False, None)):
        jobs = Jobs(2, gpus=gpus)
        try:
            assert jobs.gpus == want
        finally:
            jobs.close(finished=True)
