"""DDP (torchrun) in-process: two gloo ranks spawned by the test run the engine and the teacher as torchrun's ranks
would, and report what each rank saw. The CLI end to end under torchrun is in test_distill_cli.py."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

from cmcd_edge.distill import ddp, engine
from tests.helpers import assert_one_line_error, synthetic_paired

WORLD = 2


def _spawn(fn, tmp_path, *args) -> list[dict]:
    """Run ``fn(dist, tmp_path, *args)`` on 2 gloo ranks (1 thread each, as torchrun sets); each returns a JSON-able
    report, written by its rank to tmp_path/rankN.json."""
    mp.spawn(_rank_main, args=(fn, str(tmp_path), args), nprocs=WORLD, join=True)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]


def _rank_main(rank: int, fn, tmp: str, args) -> None:
    from pathlib import Path

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=WORLD)
    try:
        report = fn(ddp.Dist(rank, WORLD), Path(tmp), *args)
        (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(report))
        tdist.barrier()  # no rank leaves while its peer still has work in flight
    except BaseException:
        tdist.destroy_process_group()
        raise
    # A rank whose report is written and whose peer has reached the barrier leaves without gloo's teardown: twice
    # (sessions 25 and 35, one fresh-clone suite each) a rank ended there in SIGABRT, "terminate called without an
    # active exception" (pytorch/pytorch#179291's family), after its report was written. The teardown is gloo's, not
    # the engine's under test here; torchrun distills in test_torchrun.py and test_resume.py still tear down as users do.
    os._exit(0)


def _bn_phase(dist: ddp.Dist, tmp, patience: int) -> dict:
    """A BatchNorm net trained with DDP on each rank's share of a batch, as distill's step does."""
    torch.manual_seed(0)
    x, y = torch.randn(512, 8), torch.randint(0, 3, (512,))
    x[:, 0] += y * 1.5
    net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    ddp = nn.parallel.DistributedDataParallel(net)
    train, val = torch.arange(0, 384), torch.arange(384, 512)

    def step(gen):
        pick = train[torch.randperm(len(train), generator=gen)[:64]][dist.rank::dist.world]
        return nn.functional.cross_entropy(ddp(x[pick]), y[pick]), {}

    def evaluate():
        return engine.accuracy_and_loss(engine.predict_logits(net, x, val), y[val])

    spec = engine.PhaseSpec("distill", 30, 3e-2, 0.0, patience, 4, 0, 1)
    res = engine.run_phase(spec, net, step, evaluate, engine.Checkpoint(None), dist)
    return {"history": [(r["val_acc"], r["val_loss"]) for r in res.history],
            "state": {k: v.tolist() for k, v in res.best_state.items()}}


def test_run_phase_ranks_score_select_and_stop_alike(tmp_path):
    """Each rank's BatchNorm statistics came from its own shard of the last step, so the ranks scored different
    models: they selected different epochs and could stop early at different epochs (the rank left behind then failed
    with "Connection closed by peer"). Every rank now scores rank 0's model and takes rank 0's figures."""
    rank0, rank1 = _spawn(_bn_phase, tmp_path, 3)
    assert len(rank0["history"]) == len(rank1["history"])  # stopped at the same epoch
    assert rank0["history"] == rank1["history"]
    assert rank0["state"] == rank1["state"]  # the same selected weights and BatchNorm statistics


def _teacher(dist: ddp.Dist, tmp, data: str) -> dict:
    from cmcd_edge import datasets
    from cmcd_edge.distill import students, teachers
    from cmcd_edge.distill.engine import TeacherTraining
    from cmcd_edge.splitting import make_splits

    seen: list[int] = []
    layout = students.train_layout

    def counting(net):  # instrumentation only: the rows of every training forward
        net = layout(net)
        net.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[0]) if m.training else None)
        return net

    students.train_layout = counting
    ds = datasets.load(data)
    splits = make_splits(ds, 0, labeled_fraction=0.5)
    out = tmp / "teacher" if dist.main else None
    t = teachers.train_teacher(ds, "src", splits, TeacherTraining(epochs=3, batch_size=64), seed=0,
                               device=torch.device("cpu"), dist=dist, out=out)
    return {"rows_per_step": sorted(set(seen)), "steps": len(seen), "emb": t.emb[:20].tolist(),
            "test_accuracy": t.test_accuracy}


def test_teacher_under_ddp_trains_each_rank_on_its_share_and_agrees(tmp_path):
    """The built-in teacher was trained whole by every rank (N ranks, no speed-up); each now takes half of a batch."""
    ds = synthetic_paired(tmp_path / "ds", n=400)
    rank0, rank1 = _spawn(_teacher, tmp_path, str(ds.root))
    assert rank0["rows_per_step"] == rank1["rows_per_step"] == [32]  # 64-row batches, 32 rows a rank
    assert rank0["steps"] == rank1["steps"] > 0
    assert rank0["emb"] == rank1["emb"] and rank0["test_accuracy"] == rank1["test_accuracy"]
    assert (tmp_path / "teacher" / "teacher.safetensors").exists()


@pytest.mark.parametrize("argv", [["compare", "--data", "builtin:mfeat", "--source", "fac", "--target", "fou"],
                                  ["select-teacher", "--data", "builtin:mfeat", "--target", "fou"],
                                  ["distill", "--data", "builtin:mfeat", "--source", "auto", "--target", "fou"],
                                  ["demo"]])
def test_commands_that_train_one_network_after_another_refuse_torchrun(argv, tmp_path, cli):
    res = cli(*argv, "--out", str(tmp_path / "out"), env={"WORLD_SIZE": "2"})
    assert_one_line_error(res, 2, "does not run under torchrun (WORLD_SIZE=2)")
    assert not (tmp_path / "out").exists()


def _banks(dist: ddp.Dist, tmp) -> dict:
    """One training step of CMD and CRD on this rank's share of a 64-row batch (strided, as distill shards)."""
    from cmcd_edge.distill.losses import CMD, CRD, LossDims, LossParams, Pair

    torch.manual_seed(0)
    dims, params = LossDims(6, 5, 3, 100), LossParams(queue_size=128, crd_negatives=8)
    cmd, crd = CMD(dims, params), CRD(dims, params)
    full = torch.randperm(100)[:64]
    s, t = torch.randn(100, 6), torch.randn(100, 5)
    pick = full[dist.rank::dist.world] if dist.world > 1 else full
    b = Pair(s[pick], torch.zeros(len(pick), 3), t[pick], None, pick, torch.zeros(0, 3), torch.zeros(0))
    with torch.no_grad():
        cmd(b), crd(b)
    return {"queue": cmd.queue[: int(cmd.filled)].tolist(), "bank_s": crd.bank_s.tolist(), "bank_t": crd.bank_t.tolist()}


def test_queue_and_memory_bank_take_every_ranks_rows(tmp_path):
    """Under DDP each rank updated CMD's queue and CRD's banks with its own share only, and DDP's buffer broadcast
    (rank 0's, at every forward) then dropped the other ranks' updates: half of each step's rows never reached them.
    After a 2-rank step both ranks hold what one process holds after the whole batch."""
    rank0, rank1 = _spawn(_banks, tmp_path)
    alone = _banks(ddp.Dist(), tmp_path)
    assert rank0 == rank1
    assert len(rank0["queue"]) == 64
    # the same rows (in rank order)
    assert torch.allclose(torch.tensor(sorted(rank0["queue"])), torch.tensor(sorted(alone["queue"])), atol=1e-6)
    for bank in ("bank_s", "bank_t"):
        assert torch.allclose(torch.tensor(rank0[bank]), torch.tensor(alone[bank]), atol=1e-6)


class _Counting(nn.Module):
    """A frozen teacher that records the rows it is given."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net, self.rows = nn.Linear(6, 4), []

    def forward_both(self, x):
        self.rows.append(x.shape[0])
        e = self.net(x)
        return e[:, :3], e


def _embed(dist: ddp.Dist, tmp, n: int, batch: int) -> dict:
    from cmcd_edge.distill.teachers import embed_rows

    net = _Counting()
    x = torch.arange(n * 6, dtype=torch.float32).reshape(n, 6) / n
    emb, lo = embed_rows(net, x, batch, dist, with_logits=True)
    return {"rows": sum(net.rows), "emb": emb.tolist(), "logits": lo.tolist()}


@pytest.mark.parametrize("n, batch, rows_each", [(100, 16, (48, 52)), (100, 64, (64, 36)), (100, 128, (100, 100))])
def test_teacher_outputs_are_computed_once_across_ranks(tmp_path, n, batch, rows_each):
    """Every rank ran the frozen teacher over all rows; each now takes its share of the batches and the shares are
    gathered: the same bits as one process. With fewer batches than ranks every rank computes them all."""
    rank0, rank1 = _spawn(_embed, tmp_path, n, batch)
    alone = _embed(ddp.Dist(), tmp_path, n, batch)
    assert (rank0["rows"], rank1["rows"]) == rows_each
    assert rank0["emb"] == rank1["emb"] == alone["emb"] and rank0["logits"] == rank1["logits"] == alone["logits"]
