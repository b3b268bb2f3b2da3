"""distill's --resume: kill -9 at any phase then --resume gives the uninterrupted run's bits (one process and
torchrun), Ctrl-C's advice, and what --resume refuses (another config, data changed since, a teacher file replaced)."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from cmcd_edge.errors import UserError
from tests.conftest import CLI
from tests.helpers import INTERRUPTED, assert_one_line_error, kill_tree, permute_rows, run_on_copied_data, teacher_of_kind


@pytest.fixture(scope="module")
def kill_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp("killcfg") / "slow.json"
    path.write_text(json.dumps({"teacher_epochs": 20, "finetune_epochs": 60, "patience": 100}))
    return path


def _kill_args(toy, cfg, out):
    return [*CLI, "distill", "--data", str(toy), "--source", "src", "--target", "tgt", "--epochs", "40",
            "--config", str(cfg), "--out", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(toy, kill_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    res = subprocess.run(_kill_args(toy, kill_cfg, out), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return out


def _checkpoint_phase(out) -> str | None:
    """The phase the last checkpoint was written in (checkpoints are renamed into place: never half-read)."""
    path = out / "checkpoint.pt"
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["phase"]
    except (FileNotFoundError, RuntimeError, KeyError):
        return None


@pytest.mark.parametrize("stage, delay", [("teacher", 0.1), ("distill", 0.3), ("finetune", 0.0)])
def test_kill9_then_resume_matches_an_uninterrupted_run(toy, tmp_path, kill_cfg, uninterrupted, stage, delay):
    out = tmp_path / "run"
    args = _kill_args(toy, kill_cfg, out)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while _checkpoint_phase(out) != stage and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(random.Random(stage).uniform(0.0, delay))  # a random point inside the stage (fine-tuning is short)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    killed_in = _checkpoint_phase(out)
    assert stage != "teacher" or killed_in == "teacher", killed_in  # the kill landed inside the teacher's epochs
    if stage != "teacher":
        assert (out / "history.csv").read_text().count("\n") >= 2  # written every epoch, not only at the end
    (out / ".checkpoint.pt.killed.tmp").write_bytes(b"half a checkpoint")  # as if killed mid-write
    res = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    if killed_in == "teacher":  # the teacher continues from its checkpoint (was: trained again from epoch 1)
        assert "resuming teacher at epoch" in res.stderr, res.stderr
    m = json.loads((out / "metrics.json").read_text())
    ref = json.loads((uninterrupted / "metrics.json").read_text())
    assert abs(m["test_accuracy"] - ref["test_accuracy"]) <= 0.05, (m["test_accuracy"], ref["test_accuracy"])
    # stronger than seed noise: the checkpoint holds model, optimiser, schedule and loss state (CMD queue), and
    # each epoch's sampling is seeded by (seed, epoch), so a resumed CPU run ends bit-identical
    assert (out / "student.safetensors").read_bytes() == (uninterrupted / "student.safetensors").read_bytes()
    assert (out / "history.csv").read_text() == (uninterrupted / "history.csv").read_text()  # both phases' rows
    assert (out / "teacher_history.csv").read_text() == (uninterrupted / "teacher_history.csv").read_text()
    assert not list(out.glob(".*.tmp"))
    record = json.loads((out / "run.json").read_text())  # the machine it started on, and the one it resumed on
    assert record["resumed_on"] == [record["made_on"]], record


def test_ctrl_c_during_distill_says_how_to_resume(toy, tmp_path, kill_cfg):
    """Ctrl-C used to print click's bare "Aborted!" (exit 1): the user did not learn that the run folder keeps its
    last finished epoch, nor that --resume continues it."""
    out = tmp_path / "run"
    proc = subprocess.Popen(_kill_args(toy, kill_cfg, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 120
    while _checkpoint_phase(out) != "distill" and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    res = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    assert_one_line_error(res, INTERRUPTED, f"interrupted: {out}", "--resume")
    assert _checkpoint_phase(out) == "distill" and not (out / "metrics.json").exists()


def test_resume_after_the_teacher_finished_takes_its_saved_weights(toy, tmp_path, kill_cfg, uninterrupted):
    """Killed after teacher.safetensors was written, before its outputs were cached: --resume loads those weights
    (was: the teacher trained again from scratch, 45 minutes for a 20,000-row image teacher on this CPU)."""
    out = tmp_path / "run"
    out.mkdir()
    for name in ("run.json", "teacher.safetensors", "teacher.json"):
        shutil.copy(uninterrupted / name, out / name)
    res = subprocess.run([*_kill_args(toy, kill_cfg, out), "--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "teacher: trained weights found" in res.stderr and "teacher: epoch" not in res.stderr
    for name in ("teacher_outputs.safetensors", "student.safetensors"):
        assert (out / name).read_bytes() == (uninterrupted / name).read_bytes()


@pytest.mark.parametrize("stage, delay", [("teacher", 0.0), ("distill", 0.5)])
def test_torchrun_kill9_then_resume_continues_every_rank(toy, tmp_path, kill_cfg, stage, delay):
    """Under torchrun only rank 0 read the checkpoint, so rank 1 restarted at epoch 1 while rank 0 went on from the
    kill: their DDP steps no longer paired up and the resumed run failed at its end. The teacher (trained with DDP
    since session 11) continues on every rank from the same epoch too."""
    out = tmp_path / "ddp"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "cmcd_edge",
            "distill", "--data", str(toy), "--source", "src", "--target", "tgt", "--epochs", "40", "--device", "cpu",
            "--config", str(kill_cfg), "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while _checkpoint_phase(out) != stage and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(delay)
    kill_tree(proc.pid)  # torchrun and its workers (each in a session of its own)
    proc.wait()
    assert not (out / "metrics.json").exists(), "the run finished before it could be killed"
    killed_in = _checkpoint_phase(out)
    res = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    if killed_in == "teacher":
        assert "resuming teacher at epoch" in res.stderr, res.stderr[-3000:]
    rows = list(csv.DictReader((out / "history.csv").open()))
    epochs = [int(r["epoch"]) for r in rows if r["phase"] == "distill"]
    assert epochs == list(range(1, len(epochs) + 1))  # one row per epoch, none repeated or skipped by the resume
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.25


def test_resume_refuses_a_run_whose_data_changed_since_it_started(toy_run, tmp_path, cli):
    """Was: --resume checked the flags only, so a run continued on a dataset rebuilt in another row order (its split
    then mixes rows it trained on into val and test). A moved copy of the same data still resumes, named by --data at
    its new place (was: refused, 'data differ')."""
    from dataclasses import replace

    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.run_record import resume_refusal

    run, data = run_on_copied_data(toy_run, tmp_path / "changed", permute_rows)
    cfg = DistillConfig.from_json(json.loads((run / "run.json").read_text())["config"])
    why = resume_refusal(run, cfg)
    assert why and why.startswith(f"--resume: {run} was started on {data}, which changed since") and "--force" in why
    moved, data = run_on_copied_data(toy_run, tmp_path / "moved")
    cfg = DistillConfig.from_json(json.loads((moved / "run.json").read_text())["config"])
    assert resume_refusal(moved, cfg) is None
    shutil.move(data, tmp_path / "elsewhere")
    assert resume_refusal(moved, replace(cfg, data=str(tmp_path / "elsewhere"))) is None
    why = resume_refusal(moved, replace(cfg, data=str(tmp_path / "changed" / "data")))
    assert why and why.startswith(f"--resume: --data {tmp_path / 'changed' / 'data'} is not the data {moved} was "
                                  f"started on ({data})"), why


def test_resume_refuses_a_run_whose_student_network_changed_since_it_started(toy_run, tmp_path):
    """A short-sequence cnn1d run started before run.json kept ``student_spec`` trained a stem of stride 2 (session 35
    made it 1 under 32 steps): --resume names the change (was: the checkpoint's weights, of the same shapes, went on
    training in the other network). A run that kept its spec resumes; a vector run of that time too (no stem)."""
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill
    from cmcd_edge.distill.run_record import resume_refusal
    from tests.helpers import synthetic_paired

    ds = synthetic_paired(tmp_path / "data", "sequence", n=200, target_shape=(3, 16))
    cfg = DistillConfig(data=str(ds.root), source="src", target="tgt", epochs=1, teacher_epochs=1, finetune_epochs=1,
                        batch_size=64, device="cpu")
    run = tmp_path / "run"
    run_distill(cfg, run)
    assert resume_refusal(run, cfg) is None
    record = json.loads((run / "run.json").read_text())
    assert record["student_spec"]["stem_stride"] == 1
    del record["student_spec"]
    (run / "run.json").write_text(json.dumps(record))
    assert resume_refusal(run, cfg) == (f"--resume: {run} trained another student network (stem_stride: 2 vs now 1; "
                                        "made by an older version): rerun with --force, or use a new --out")
    vector = tmp_path / "vector"
    shutil.copytree(toy_run, vector)
    record = json.loads((vector / "run.json").read_text())
    del record["student_spec"]
    (vector / "run.json").write_text(json.dumps(record))
    assert resume_refusal(vector, DistillConfig.from_json(record["config"])) is None


def test_resume_refuses_a_run_whose_teacher_network_changed_since_it_started(tmp_path):
    """A run distilling from a short-sequence source trained a cnn1d teacher of stem stride 2 before session 35:
    --resume names the teacher's change, whether the run had finished its teacher (run.json's ``teacher``) or was
    killed before (its ``teacher_spec``, or neither in a version before either) (was: a killed teacher's checkpoint
    went on training in the other network, of the same shapes). A run that kept the spec it trained resumes."""
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill
    from cmcd_edge.distill.run_record import resume_refusal
    from tests.helpers import synthetic_paired

    ds = synthetic_paired(tmp_path / "data", "sequence", n=200, target_shape=(3, 16))
    cfg = DistillConfig(data=str(ds.root), source="tgt", target="src", epochs=1, teacher_epochs=1, finetune_epochs=1,
                        batch_size=64, device="cpu")  # the (3, 16) sequence view is the source
    run = tmp_path / "run"
    run_distill(cfg, run)
    run_json = run / "run.json"
    record = json.loads(run_json.read_text())
    assert record["teacher"]["spec"]["stem_stride"] == 1 and record["teacher_spec"] == record["teacher"]["spec"]
    want = (f"--resume: {run} trained another teacher network (stem_stride: 2 vs now 1; made by an older version): "
            "rerun with --force, or use a new --out")
    started = {**record, "teacher": None}  # as run.json reads while the teacher trains
    for made, refusal in [(record, None), (started, None),
                          ({**record, "teacher": {**record["teacher"], "spec": {
                              k: v for k, v in record["teacher"]["spec"].items() if k != "stem_stride"}}}, want),
                          ({k: v for k, v in started.items() if k != "teacher_spec"}, want)]:
        run_json.write_text(json.dumps(made))
        assert resume_refusal(run, cfg) == refusal


@pytest.mark.parametrize("kind", ["pt2", "onnx", "factory", "weights"])
def test_resume_refuses_a_teacher_replaced_since_the_run_started(kind, toy, tmp_path, cli, monkeypatch):
    """Was: --resume took the run's cached outputs of the old --teacher after the file was replaced, or the factory's
    module edited, and the run ended with a student of the old teacher."""
    ref = teacher_of_kind(kind, tmp_path, 0, monkeypatch)
    args = ("distill", "--data", toy, "--source", "src", "--target", "tgt", "--teacher", ref, "--method", "cmd",
            "--epochs", "2", "--out", tmp_path / "run")
    assert cli(*args).returncode == 0
    (tmp_path / "run" / "metrics.json").unlink()  # as if killed before its last write
    res = cli(*args, "--resume")  # the same teacher: the run goes on with its cached outputs
    assert res.returncode == 0 and (tmp_path / "run" / "metrics.json").exists(), res.stderr[-2000:]
    (tmp_path / "run" / "metrics.json").unlink()
    teacher_of_kind(kind, tmp_path, 1, monkeypatch)
    res = cli(*args, "--resume")
    what = "its factory's module or weights" if kind in ("factory", "weights") else "its file"
    assert_one_line_error(res, 2, f"--resume: --teacher {ref} changed since {tmp_path / 'run'} started (the sha256 "
                          f"of {what}", "--force")


def test_resume_says_when_the_run_started_on_another_machine(toy_run, tmp_path, caplog):
    """A run resumed on another CPU type (a preempted cloud box replaced by another kind) goes on, and says that it
    will not repeat an uninterrupted run bit for bit; on its own machine it says nothing."""
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.machine import machine_name
    from cmcd_edge.distill.run_record import prepare_out

    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    record = json.loads((out / "run.json").read_text())
    cfg = DistillConfig.from_json(record["config"])
    caplog.set_level("WARNING", logger="cmcd_edge.distill.run_record")
    prepare_out(out, cfg, resume=True, force=False)
    assert not caplog.records
    record["made_on"] = {**record["made_on"], "cpu": "Other CPU"}
    (out / "run.json").write_text(json.dumps(record))
    prepare_out(out, cfg, resume=True, force=False)
    assert [m.getMessage().split(";")[0] for m in caplog.records] == [
        f"--resume: {out} trained on {machine_name(record['made_on'])}"]


def test_resume_records_every_machine_the_run_trained_on(toy_run, tmp_path, caplog):
    """Was: run.json's made_on named the machine of the last resume only, so a run trained partly on an AVX2 host and
    partly on an AVX-512 one read as the latter's, and a second resume or a compare --extend warned of nothing."""
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.machine import machine_name
    from cmcd_edge.distill.run_record import note_resumed, prepare_out

    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    record = json.loads((out / "run.json").read_text())
    here, cfg = record["made_on"], DistillConfig.from_json(record["config"])
    record["made_on"] = {**here, "cpu": "Other CPU"}
    (out / "run.json").write_text(json.dumps(record))
    caplog.set_level("WARNING", logger="cmcd_edge.distill.run_record")
    prepare_out(out, cfg, resume=True, force=False)
    assert json.loads((out / "run.json").read_text()) == record  # nothing is written before the run's files load
    note_resumed(out, cfg)
    after = json.loads((out / "run.json").read_text())
    assert after["made_on"] == record["made_on"] and after["resumed_on"] == [here]
    assert {k: v for k, v in after.items() if k != "resumed_on"} == record  # nothing else rewritten
    after["made_on"] = here  # as if it had started here, and been resumed there
    after["resumed_on"] = [record["made_on"]]
    (out / "run.json").write_text(json.dumps(after))
    caplog.clear()
    prepare_out(out, cfg, resume=True, force=False)  # a second resume, here: the earlier one's machine is named
    note_resumed(out, cfg)
    assert [m.getMessage().split(";")[0] for m in caplog.records] == [
        f"--resume: {out} trained on {machine_name(record['made_on'])}"]
    assert json.loads((out / "run.json").read_text())["resumed_on"] == [record["made_on"], here]


@pytest.mark.parametrize("victim", ["checkpoint.pt", "teacher_outputs.safetensors"])
def test_resume_refused_for_an_unreadable_file_leaves_run_json_as_it_was(toy_run, tmp_path, victim):
    """Was: --resume added this machine to run.json's resumed_on before it read the checkpoint and teacher outputs,
    so a resume refused for a corrupt file recorded a machine that trained nothing."""
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill

    out = tmp_path / "run"
    shutil.copytree(toy_run, out)
    (out / "metrics.json").unlink()  # a run killed before it finished
    (out / victim).write_bytes(b"\0" * 64)
    before = (out / "run.json").read_bytes()
    cfg = DistillConfig.from_json(json.loads(before)["config"])
    with pytest.raises(UserError, match=victim.replace(".", r"\.")):
        run_distill(cfg, out, resume=True)
    assert (out / "run.json").read_bytes() == before
