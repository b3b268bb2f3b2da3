"""--teacher-cache: the same teacher distilled into another target or method (or seed, for a file or factory) is not
trained or run over the rows again, nor are select-teacher's candidates; what a run takes from the cache gives the
student a run without it gives; a teacher changed since, or an entry tampered with, is not taken."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from cmcd_edge import datasets
from cmcd_edge.datasets import ViewSpec
from cmcd_edge.distill import compare, pipeline
from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.pipeline import run_distill
from cmcd_edge.errors import UserError
from tests.helpers import counted_teacher, teacher_of_kind


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    """A 300-row source ``src`` and two target views, ``tgt`` and ``tgt2``; 2 epochs of each phase, CPU."""
    rng = np.random.default_rng(0)
    n, y = 300, np.arange(300) % 4
    protos = rng.normal(size=(4, 16))
    views = {"src": ViewSpec((protos[y] * 2 + rng.normal(size=(n, 16)) * 0.5).astype(np.float32), "vector"),
             "tgt": ViewSpec((protos[y][:, :8] + rng.normal(size=(n, 8))).astype(np.float32), "vector"),
             "tgt2": ViewSpec((protos[y][:, 8:] + rng.normal(size=(n, 8))).astype(np.float32), "vector")}
    root = datasets.write_dataset(tmp_path_factory.mktemp("data") / "two", views, y, ["a", "b", "c", "d"]).root
    return DistillConfig(data=str(root), source="src", target="tgt", epochs=2, teacher_epochs=2, finetune_epochs=1,
                         device="cpu")


@pytest.fixture
def trainings(monkeypatch):
    """How many teachers were trained (the real training runs)."""
    calls = []

    def counted(real):
        def train(*args, **kw):
            calls.append(1)
            return real(*args, **kw)
        return train

    monkeypatch.setattr(pipeline, "train_teacher", counted(pipeline.train_teacher))
    monkeypatch.setattr(compare, "train_teacher", counted(compare.train_teacher))
    return calls


def _bytes(run, name):
    return (run / name).read_bytes()


def test_teacher_cache_serves_another_target_and_gives_the_student_a_run_without_it_gives(cfg, tmp_path, trainings):
    cache = str(tmp_path / "cache")
    run_distill(dataclasses.replace(cfg, teacher_cache=cache), tmp_path / "tgt")
    assert len(trainings) == 1 and len(list((tmp_path / "cache").iterdir())) == 1
    made_on = json.loads(next((tmp_path / "cache").iterdir()).joinpath("key.json").read_text())["made_on"]
    assert made_on["data"] == cfg.data and made_on["teacher"] == "train"  # which entry is which, for a reader
    other = dataclasses.replace(cfg, target="tgt2", method="cmd")
    cached = run_distill(dataclasses.replace(other, teacher_cache=cache), tmp_path / "tgt2")
    assert len(trainings) == 1  # not trained again
    fresh = run_distill(other, tmp_path / "fresh")
    assert len(trainings) == 2
    for name in ("student.safetensors", "teacher.safetensors", "teacher_outputs.safetensors", "teacher_history.csv"):
        assert _bytes(tmp_path / "tgt2", name) == _bytes(tmp_path / "fresh", name), name
    assert cached.metrics["test_accuracy"] == fresh.metrics["test_accuracy"]
    assert cached.metrics["teacher_test_accuracy"] == fresh.metrics["teacher_test_accuracy"]
    run_distill(dataclasses.replace(cfg, seed=1, teacher_cache=cache), tmp_path / "seed1")
    assert len(trainings) == 3  # a trained teacher is one seed's
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_teacher_cache_runs_a_loaded_teacher_once_and_scores_it_on_each_seed(cfg, tmp_path, monkeypatch):
    from cmcd_edge.distill.user_teacher import load_teacher
    from cmcd_edge.splitting import make_splits

    ref, passes = counted_teacher(tmp_path, "counted_cache_teacher", monkeypatch)
    loaded = dataclasses.replace(cfg, teacher=ref, teacher_cache=str(tmp_path / "cache"))
    accs = [run_distill(dataclasses.replace(loaded, seed=s), tmp_path / f"s{s}").metrics["teacher_test_accuracy"]
            for s in (0, 1)]
    run_distill(dataclasses.replace(loaded, target="tgt2"), tmp_path / "tgt2")
    assert passes.read_text() == "x"  # one pass over the rows served three runs
    ds = datasets.load(cfg.data)
    for s, acc in zip((0, 1), accs, strict=True):
        fresh = load_teacher(loaded.teacher, ds, "src", make_splits(ds, s), torch.device("cpu"))
        assert acc == fresh.test_accuracy
        assert _bytes(tmp_path / f"s{s}", "teacher_outputs.safetensors") == _bytes(tmp_path / "s0",
                                                                                   "teacher_outputs.safetensors")
    assert accs[0] != accs[1]  # each seed's own test split


@pytest.mark.parametrize("kind", ["pt2", "onnx", "factory", "weights"])
def test_teacher_cache_does_not_serve_a_teacher_changed_since(kind, cfg, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    for seed in (0, 1):  # the same path or factory name, another network
        ref = teacher_of_kind(kind, tmp_path, seed, monkeypatch)
        run_distill(dataclasses.replace(cfg, teacher=ref, method="cmd", teacher_cache=str(cache)), tmp_path / f"t{seed}")
    assert len(list(cache.iterdir())) == 2  # a second entry: the first one was not served
    if kind != "factory":  # (an edited factory module, already imported by this process, runs as it was imported)
        assert _bytes(tmp_path / "t0", "teacher_outputs.safetensors") != _bytes(tmp_path / "t1",
                                                                                "teacher_outputs.safetensors")


def _only_entry(cache):
    (entry,) = cache.iterdir()
    return entry


@pytest.mark.parametrize("damage, says", [
    (lambda e: e.joinpath("key.json").write_text(json.dumps({"key": {"source": "tgt"}})), "key.json differs"),
    (lambda e: e.joinpath("key.json").write_text("{"), "key.json is unreadable"),
    (lambda e: e.joinpath("teacher_outputs.safetensors").write_bytes(b"\0" * 64), "is corrupt"),
])
def test_teacher_cache_refuses_a_damaged_entry_and_says_to_delete_it(damage, says, cfg, tmp_path):
    cached = dataclasses.replace(cfg, teacher_cache=str(tmp_path / "cache"))
    run_distill(cached, tmp_path / "first")
    entry = _only_entry(tmp_path / "cache")
    damage(entry)
    with pytest.raises(UserError, match=says) as err:
        run_distill(cached, tmp_path / "second")
    assert f"delete {entry}" in str(err.value) and "--teacher-cache" in str(err.value)
    assert not (tmp_path / "second").exists()  # refused before the run folder was made


def test_teacher_cache_that_cannot_be_written_warns_and_the_run_goes_on(cfg, tmp_path, caplog):
    cached = dataclasses.replace(cfg, teacher_cache=str(tmp_path / "cache"))
    run_distill(cached, tmp_path / "first")
    entry = _only_entry(tmp_path / "cache")
    for f in entry.iterdir():
        f.unlink()
    entry.rmdir()
    entry.write_text("in the way")  # where the entry goes, a file
    run_distill(cached, tmp_path / "second")
    assert (tmp_path / "second" / "metrics.json").exists()
    assert "could not keep this teacher" in caplog.text and "the run goes on" in caplog.text


def test_teacher_cache_serves_compare_on_another_target(cfg, tmp_path, trainings):
    cached = dataclasses.replace(cfg, teacher_cache=str(tmp_path / "cache"))
    first = compare.run_compare(cached, ["supervised"], 2, tmp_path / "tgt", upper_bound=False)
    assert len(trainings) == 2
    second = compare.run_compare(dataclasses.replace(cached, target="tgt2"), ["supervised"], 2, tmp_path / "tgt2",
                                 upper_bound=False)
    assert len(trainings) == 2  # each seed's teacher came from the cache
    assert second["teacher_test_accuracy"] == first["teacher_test_accuracy"]
    for seed in (0, 1):
        folder = f"teachers/seed{seed}"
        for name in ("teacher.safetensors", "teacher_history.csv"):
            assert _bytes(tmp_path / "tgt2" / folder, name) == _bytes(tmp_path / "tgt" / folder, name), name


def test_teacher_cache_is_not_part_of_what_resume_must_match(cfg):
    assert dataclasses.replace(cfg, teacher_cache="/x").training_key() == cfg.training_key()


def test_a_cached_teacher_without_logits_is_refused_for_kd_before_the_run_folder(cfg, tmp_path, monkeypatch):
    """As a loaded teacher's 2-row probe is checked (was, from the cache: after the run folder was made)."""
    ref = teacher_of_kind("pt2", tmp_path, 0, monkeypatch)  # embeddings only
    cached = dataclasses.replace(cfg, teacher=ref, teacher_cache=str(tmp_path / "cache"))
    run_distill(dataclasses.replace(cached, method="cmd"), tmp_path / "cmd")
    with pytest.raises(UserError, match="needs teacher logits"):
        run_distill(cached, tmp_path / "cmcd")  # cmcd has a kd term
    assert not (tmp_path / "cmcd").exists()


def test_teacher_cache_does_not_serve_a_teacher_of_edited_teacher_code(cfg, tmp_path, trainings, monkeypatch):
    """The version string stays between releases; the teacher's modules (network, training, the pass) are keyed."""
    from cmcd_edge.distill import teacher_cache

    cached = dataclasses.replace(cfg, teacher_cache=str(tmp_path / "cache"))
    run_distill(cached, tmp_path / "before")
    monkeypatch.setattr(teacher_cache, "_code_sha256", lambda: "an edited students.py")
    run_distill(cached, tmp_path / "after")
    assert len(trainings) == 2 and len(list((tmp_path / "cache").iterdir())) == 2


def test_select_teacher_ranks_another_target_with_the_candidate_teachers_it_cached(cfg, tmp_path, monkeypatch):
    """A candidate's teacher does not depend on the target: ranking sources for a second target trained every
    candidate's teacher again (minutes each for an image candidate on this CPU)."""
    from cmcd_edge.distill import select

    calls = []
    real = select.train_teacher
    monkeypatch.setattr(select, "train_teacher", lambda ds, view, *a, **kw: calls.append(view) or real(ds, view, *a, **kw))
    common = {"seeds": 1, "teacher_epochs": 2, "student_epochs": 2, "device": "cpu"}
    cache = str(tmp_path / "cache")
    select.rank_teachers(cfg.data, "tgt", ["src", "tgt2"], teacher_cache=cache, **common)
    warm = select.rank_teachers(cfg.data, "tgt2", ["src", "tgt"], teacher_cache=cache, **common)
    assert calls == ["src", "tgt2", "tgt"]  # src's teacher came from the cache
    entries = list((tmp_path / "cache").iterdir())
    assert len(entries) == 3 and all((e / "teacher.safetensors").is_file() for e in entries)  # networks kept too
    cold = select.rank_teachers(cfg.data, "tgt2", ["src", "tgt"], **common)
    assert calls[3:] == ["src", "tgt"]
    assert [(r["view"], r["delta"], r["teacher_test_accuracy"]) for r in warm["ranking"]] == \
        [(r["view"], r["delta"], r["teacher_test_accuracy"]) for r in cold["ranking"]]


def test_teacher_cache_list_and_prune_remove_what_this_install_cannot_use(cfg, tmp_path, monkeypatch, cli):
    """Entries of other code or versions are never hit again, and each code edit of the teacher's modules makes new
    keys: without a way to see and remove them a cache only grew."""
    from cmcd_edge.distill import teacher_cache

    cache = tmp_path / "cache"
    cached = dataclasses.replace(cfg, teacher_cache=str(cache))
    with monkeypatch.context() as m:
        m.setattr(teacher_cache, "_code_sha256", lambda: "the code of an earlier checkout")
        run_distill(cached, tmp_path / "old")
    run_distill(cached, tmp_path / "now")
    (cache / ".0123abcd.x1y2.tmp").mkdir()  # the temp folder of a write that was killed
    listed = cli("teacher-cache", "list", cache)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert sum("train, seed 0, 2 epochs" in ln and ln.endswith("yes") for ln in lines) == 1
    assert sum(ln.endswith("no (other code or versions)") for ln in lines) == 1
    assert "no key.json" in listed.stdout and lines[-1].startswith("3 entries, ") and "2 this install cannot use" in lines[-1]
    entries = {e["entry"]: e["usable"] for e in json.loads(cli("teacher-cache", "list", cache, "--json").stdout)}
    assert sorted(entries.values()) == [False, False, True]
    pruned = cli("teacher-cache", "prune", cache)
    assert pruned.returncode == 0 and pruned.stdout.startswith("removed 2 entries (") and "1 left" in pruned.stdout
    (kept,) = [p.name for p in cache.iterdir() if p.is_dir()]
    assert entries[kept] is True
    run_distill(dataclasses.replace(cached, method="cmd"), tmp_path / "again")  # still served
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1
    assert cli("teacher-cache", "prune", cache, "--all").stdout.startswith("removed 1 entry (")
    assert not [p for p in cache.iterdir() if p.is_dir()]


def test_teacher_cache_prune_max_size_removes_the_least_recently_used_entries(cfg, tmp_path, cli):
    """Was: no size bound short of --all, and no record of use: a cache of large teachers (a camera teacher's outputs
    over a million rows are gigabytes) grew until the disk filled. A run served an entry now marks it used."""
    import os
    import time

    cache = tmp_path / "cache"
    for seed in (0, 1, 2):  # three teachers, made in that order
        run_distill(dataclasses.replace(cfg, teacher_cache=str(cache), seed=seed), tmp_path / f"s{seed}")
    by_seed = {json.loads((e / "key.json").read_text())["key"]["seed"]: e for e in cache.iterdir() if e.is_dir()}
    past = time.time() - 3600
    for seed, entry in by_seed.items():  # made an hour ago, a second apart
        os.utime(entry / "key.json", (past + seed, past + seed))
    run_distill(dataclasses.replace(cfg, teacher_cache=str(cache), seed=0, method="cmd"), tmp_path / "again")
    assert (by_seed[0] / "key.json").stat().st_mtime > past + 60  # served: marked used now
    listed = {e["entry"]: e for e in json.loads(cli("teacher-cache", "list", cache, "--json").stdout)}
    assert listed[by_seed[0].name]["last_used"] > listed[by_seed[2].name]["last_used"]
    size = sum(f.stat().st_size for f in by_seed[0].iterdir())
    res = cli("teacher-cache", "prune", cache, "--max-size", str(2 * size + 10))
    assert res.returncode == 0 and res.stdout.startswith("removed 1 entry ("), res.stdout + res.stderr
    assert f"at most {2 * size + 10}" in res.stdout
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == sorted([by_seed[0].name, by_seed[2].name])


@pytest.mark.parametrize("args,needle", [
    (("--max-size", "lots"), "--max-size 'lots': expected a size such as 500M, 10G or 2T"),
    (("--max-size", "-1G"), "--max-size '-1G': expected a size"),
    (("--max-size", "1G", "--all"), "--max-size 1G: keeps the entries used last, but --all removes every entry"),
])
def test_teacher_cache_prune_max_size_refuses_a_bad_size(tmp_path, cli, args, needle):
    from tests.helpers import assert_one_line_error

    (tmp_path / "cache").mkdir()
    assert_one_line_error(cli("teacher-cache", "prune", tmp_path / "cache", *args), 2, needle)


def test_parse_size_reads_units_of_1000():
    from cmcd_edge.cli_cache import parse_size

    assert [parse_size(t) for t in ("500M", "10G", "1.5GB", "2t", "123", "0")] == \
        [500 * 10**6, 10 * 10**9, 15 * 10**8, 2 * 10**12, 123, 0]


def test_teacher_cache_prune_leaves_an_entry_another_process_is_writing(tmp_path, cli):
    from cmcd_edge.fsutil import exclusive

    cache = tmp_path / "cache"
    (cache / ".0123abcd.x1y2.tmp").mkdir(parents=True)  # a write in progress: atomic_dir holds the entry's lock
    with exclusive(cache / "0123abcd"):
        res = cli("teacher-cache", "prune", cache)
    assert res.returncode == 0 and "1 being written by another process, left alone" in res.stdout
    assert (cache / ".0123abcd.x1y2.tmp").is_dir()


def test_teacher_cache_store_beside_another_process_storing_it_is_not_a_warning(cfg, tmp_path, caplog):
    """Two runs of one teacher finishing together: the second used to warn that it 'could not keep this teacher',
    though the first was keeping the same one."""
    from cmcd_edge.distill.teacher_cache import TeacherCache
    from cmcd_edge.distill.teachers import TeacherOutputs
    from cmcd_edge.fsutil import exclusive

    ds = datasets.load(cfg.data)
    cache = TeacherCache.for_run(dataclasses.replace(cfg, teacher_cache=str(tmp_path / "c")), ds, torch.device("cpu"))
    caplog.set_level("INFO", logger="cmcd_edge.distill.teacher_cache")
    with exclusive(cache.entry):  # the other process's write
        cache.put(TeacherOutputs.none(ds.n_rows))
    assert "another process is keeping this teacher" in caplog.text and "could not keep" not in caplog.text
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    cache.put(TeacherOutputs.none(ds.n_rows))
    assert (cache.entry / "key.json").is_file()


@pytest.mark.parametrize("gone", ["whole entry", "halfway"])
def test_teacher_cache_entry_pruned_while_a_run_reads_it_is_a_miss_not_a_corrupt_entry(gone, cfg, tmp_path,
                                                                                    monkeypatch, trainings, caplog):
    """`teacher-cache prune` (another process) removing the entry between the run's read of key.json and of the
    outputs used to fail the run with 'lacks teacher_outputs.*; delete ... to recompute it'."""
    import shutil

    from cmcd_edge.distill.teachers import TeacherOutputs

    cached = dataclasses.replace(cfg, teacher_cache=str(tmp_path / "cache"))
    run_distill(cached, tmp_path / "first")
    entry = _only_entry(tmp_path / "cache")
    real = TeacherOutputs.load.__func__

    def pruned_meanwhile(cls, folder):
        if folder == entry and entry.exists():
            if gone == "whole entry":
                shutil.rmtree(entry)
            else:  # prune caught halfway: key.json (removed first) and the embeddings gone, their json left
                (entry / "key.json").unlink()
                (entry / "teacher_outputs.safetensors").unlink()
        return real(cls, folder)

    monkeypatch.setattr(TeacherOutputs, "load", classmethod(pruned_meanwhile))
    caplog.set_level("INFO", logger="cmcd_edge.distill.teacher_cache")
    before = len(trainings)
    run_distill(cached, tmp_path / "second")
    assert len(trainings) == before + 1  # the teacher trained again, as on any miss
    assert "removed while this run read it" in caplog.text
    assert _bytes(tmp_path / "first", "student.safetensors") == _bytes(tmp_path / "second", "student.safetensors")


def test_teacher_cache_entry_remove_takes_key_json_first(cfg, tmp_path, monkeypatch):
    """So a prune killed (or raced) halfway leaves an entry no run takes for whole: a miss, not 'corrupt'."""
    import shutil

    from cmcd_edge.distill import teacher_cache

    run_distill(dataclasses.replace(cfg, teacher_cache=str(tmp_path / "cache")), tmp_path / "first")
    (e,) = teacher_cache.entries(tmp_path / "cache")
    seen = []
    monkeypatch.setattr(shutil, "rmtree", lambda p, *a, **k: seen.append((p / "key.json").exists()))
    e.remove()
    assert seen == [False]


@pytest.mark.parametrize("command", ["list", "prune"])
def test_teacher_cache_list_and_prune_beside_another_prune_do_not_fail(command, cfg, tmp_path, monkeypatch, cli):
    """An entry another `prune` removes while this command lists it, or before this one removes it, used to end the
    command in a traceback (FileNotFoundError from a stat, or 'cannot remove')."""
    import shutil

    from cmcd_edge.distill import teacher_cache

    cache = tmp_path / "cache"
    run_distill(dataclasses.replace(cfg, teacher_cache=str(cache)), tmp_path / "first")
    entry = _only_entry(cache)
    if command == "list":  # removed between the scan of the folder and the stat of its files
        real_iterdir = type(entry).iterdir

        def iterdir(self):
            found = list(real_iterdir(self))
            if self == entry:
                shutil.rmtree(entry)
            return iter(found)

        monkeypatch.setattr(type(entry), "iterdir", iterdir)
        res = cli("teacher-cache", "list", cache)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[-1].startswith("0 entries")
    else:  # removed between this prune's listing and its removal
        real_entries = teacher_cache.entries

        def listed_then_removed(root):
            found = real_entries(root)
            shutil.rmtree(entry)
            return found

        monkeypatch.setattr(teacher_cache, "entries", listed_then_removed)
        res = cli("teacher-cache", "prune", cache, "--all")
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("removed 0 entries (0.0 MB); 0 left") and "1 removed meanwhile" in res.stdout


def test_teacher_cache_keys_the_teachers_select_window(cfg, tmp_path, trainings):
    """A teacher selected over another window of epochs is another teacher: not served from the cache."""
    cache = str(tmp_path / "cache")
    for window in (1, 3, 3):
        run_distill(dataclasses.replace(cfg, teacher_epochs=4, teacher_select_window=window, teacher_cache=cache),
                    tmp_path / f"w{window}", force=True)
    assert len(trainings) == 2
