from __future__ import annotations

import csv
import hashlib
import json
import re

import numpy as np
import pytest
import torch

from cmcd_edge import datasets
from tests.conftest import run_cli
from tests.helpers import (
    assert_one_line_error,
    save_exported,
    save_torchscript,
    synthetic_paired,
)

FAST = ["--epochs", "3", "--config"]


@pytest.fixture(scope="module")
def fast_cfg(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "fast.json"
    path.write_text(json.dumps({"teacher_epochs": 3, "finetune_epochs": 2}))
    return str(path)


def _distill(cli, toy, out, *extra, cfg=None):
    args = ["distill", "--data", toy, "--source", "src", "--target", "tgt", "--epochs", "3", "--out", out, *extra]
    if cfg:
        args += ["--config", cfg]
    return cli(*args)


def test_distill_quiet_still_prints_the_recipe_once(cli, toy, tmp_path, fast_cfg):
    res = cli("-q", "distill", "--data", toy, "--source", "src", "--target", "tgt", "--epochs", "3", "--method", "kd",
              "--out", tmp_path / "run", "--config", fast_cfg)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("Loss = 1.0 * kd + 1.0 * ce") == 1 and "Loss" not in res.stderr


def test_distill_writes_a_complete_run(cli, toy, tmp_path, fast_cfg):
    res = _distill(cli, toy, tmp_path / "run", cfg=fast_cfg)
    assert res.returncode == 0, res.stderr
    recipe = "Loss = 1.0 * cmd + 1.0 * cmc + 1.0 * kd + 1.0 * fitnet + 1.0 * ce"
    assert (res.stdout + res.stderr).count(recipe) == 1  # was printed twice: logged, then echoed again
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"run.json", "metrics.json", "history.csv", "student.safetensors", "student.json", "teacher.safetensors",
            "teacher.json", "checkpoint.pt"} <= files
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("method", "source", "target", "seed", "labeled_fraction", "test_accuracy", "test_macro_f1",
                "teacher_test_accuracy", "params", "macs", "wall_s", "modality_gap", "val_accuracy",
                "test_per_class", "test_confusions"):
        assert key in m
    per_class = m["test_per_class"]
    correct = sum(round(c["top1"] * c["rows"]) for c in per_class.values())
    assert sorted(per_class) == ["c0", "c1", "c2", "c3"]
    assert correct / sum(c["rows"] for c in per_class.values()) == pytest.approx(m["test_accuracy"])
    assert sum(c["rows"] for c in m["test_confusions"]) == sum(c["rows"] for c in per_class.values()) - correct
    assert 0.0 <= m["test_accuracy"] <= 1.0 and m["params"] > 0
    assert m["distill_samples_per_s"] > 0 and m["train_device"] == "cpu" and m["train_autocast"] is None
    assert f"distill {m['distill_samples_per_s']:,.0f} samples/s on cpu) ->" in res.stdout
    history = list(csv.DictReader(open(tmp_path / "run" / "history.csv")))
    assert any(abs(float(r["val_acc"]) - m["val_accuracy"]) < 1e-4 for r in history)  # the kept epoch's val figure
    curve = list(csv.DictReader(open(tmp_path / "run" / "teacher_history.csv")))  # the teacher's epochs too
    assert [int(r["epoch"]) for r in curve] == list(range(1, len(curve) + 1)) and {r["phase"] for r in curve} == {"teacher"}
    picked = re.search(r"teacher: epoch (\d+) selected \(val accuracy ([\d.]+)\)", res.stderr)
    assert float(curve[int(picked[1]) - 1]["val_acc"]) == pytest.approx(float(picked[2]), abs=1e-4)


def test_distill_on_mostly_unlabeled_rows_scores_labeled_rows_only(cli, tmp_path, fast_cfg):
    """The user's usual data: many paired rows, few labels (-1 elsewhere). Unlabeled rows are distilled on (train),
    val and test score labeled rows only; before, the -1 rows reached cross-entropy and the run crashed."""
    data = synthetic_paired(tmp_path / "partly", n=400, unlabeled=0.7)
    res = _distill(cli, str(data.root), tmp_path / "run", cfg=fast_cfg)
    assert res.returncode == 0, res.stderr
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    per_class = np.bincount(data.labels[data.labels >= 0])  # stratified 60/20/20 of each class's labeled rows
    train, val = (sum(int(round(f * n)) for n in per_class) for f in (0.6, 0.2))
    unlabeled = int((data.labels < 0).sum())
    assert 250 < unlabeled < 310
    labeled = sum(max(1, int(round(0.1 * round(0.6 * n)))) for n in per_class)  # 10% of labeled train rows
    assert run["splits"] == {"train": unlabeled + train, "val": val, "test": int(per_class.sum()) - train - val,
                             "labeled": labeled}
    assert sum(c["rows"] for c in m["test_per_class"].values()) == run["splits"]["test"]
    assert "--labeled-fraction 0.1 keeps only that share" in res.stderr and "--labeled-fraction 1" in res.stderr


def test_distill_warns_when_the_labeled_fraction_is_raised_to_a_row_per_class(cli, toy, tmp_path, fast_cfg):
    """Was: --labeled-fraction 0.002 on 90 train rows per class (0.18 of a row each) labeled one row of each class,
    4 rows where 0 were asked for, without a word; metrics.json's labeled_rows was the only trace."""
    res = _distill(cli, toy, tmp_path / "run", "--labeled-fraction", "0.002", "--method", "supervised", cfg=fast_cfg)
    assert res.returncode == 0, res.stderr
    assert ("--labeled-fraction 0.002 rounds to no labeled row in 4 of 4 classes of the train split; each takes one, "
            "so 4 rows are labeled: 1.11% of 360, not 0.2%") in res.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["labeled_rows"] == 4
    res = _distill(cli, toy, tmp_path / "run2", "--labeled-fraction", "0.02", "--method", "supervised", cfg=fast_cfg)
    assert res.returncode == 0 and "rounds to no labeled row" not in res.stderr, res.stderr


def test_distill_refuses_a_fixed_val_split_without_labeled_rows(cli, tmp_path):
    from cmcd_edge import datasets

    data = synthetic_paired(tmp_path / "toy", n=40)
    labels = data.labels.copy()
    labels[1::4] = -1  # the rows splits.npy puts in val
    views = {v: datasets.ViewSpec(np.asarray(data.view(v)), data.views[v].kind) for v in ("src", "tgt")}
    fixed = datasets.write_dataset(tmp_path / "fixed", views, labels, list(data.classes), splits=np.tile([0, 1, 2, 0], 10))
    res = _distill(cli, str(fixed.root), tmp_path / "run")
    assert_one_line_error(res, 2, "the val split is without labeled rows")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,needles", [
    (["--target", "nope"], ["--target 'nope'", "valid views: src, tgt"]),
    (["--target", "src"], ["same view"]),
    (["--labeled-fraction", "0"], ["outside (0, 1]"]),
    (["--labeled-fraction", "1.5"], ["outside (0, 1]"]),
    (["--method", "cmdd"], ["unknown --method 'cmdd'", "did you mean 'cmd'"]),
    (["--batch-size", "100000000"], ["--batch-size", "lower"]),
    (["--student", "cnn2d"], ["--student cnn2d for --target tgt", "cnn2d takes image views"]),
    (["--student", "cnn3d"], ["--student 'cnn3d'", "did you mean 'cnn2d'"]),
    (["--recipe", "1*kd+x*ce"], ["--recipe '1*kd+x*ce'", "weight of 'x*ce'"]),
    (["--seed", "-1"], ["--seed -1: must be in [0, 4294967295]"]),  # was: internal error: ValueError
    (["--out", "/dev/null"], ["--out /dev/null: is a file; name a folder"]),  # was: internal error: NotADirectoryError
    (["--teacher-cache", "/dev/null"], ["--teacher-cache /dev/null: is a file; name a folder"]),
])
def test_distill_bad_input(cli, toy, tmp_path, args, needles):
    base = ["distill", "--data", toy, "--source", "src", "--target", "tgt", "--out", tmp_path / "r"]
    for i in range(0, len(args), 2):  # later flags override earlier ones in click
        base += args[i:i + 2]
    assert_one_line_error(cli(*base), 2, *needles)
    assert not (tmp_path / "r").exists()  # refused before the run folder is made or a teacher trained


@pytest.mark.parametrize("name,text,needles", [
    ("c.toml", "epochs = 5\nfinetune_epoch = 1\n", ["--config ", "c.toml: unknown key 'finetune_epoch'",
                                                     "did you mean 'finetune_epochs'"]),
    ("c.json", '{"loss": {"tau": 1}}', ["c.json: loss: unknown key 'tau'", "did you mean 'tau_t'", "valid: cmc_"]),
    ("c.json", '{"lr": "0.01"}', ["--config ", "c.json: lr must be a number, got '0.01'"]),  # was: internal TypeError
    # a bad value from the file names the file and the key (was: '--teacher-epochs must be >= 1', a flag that does not
    # exist; '--labeled-fraction 2.0 is outside (0, 1]', not typed; 'loss.tau_s must be ...', no file)
    ("c.json", '{"teacher_epochs": 0}', ["--config ", "c.json: teacher_epochs must be >= 1, got 0"]),
    ("c.toml", "labeled_fraction = 2.0\n", ["--config ", "c.toml: labeled_fraction 2.0 is outside (0, 1]"]),
    # a value click converts (a choice, a number) also names the file and its key (was: "Invalid value for
    # '--device': 'gpu' is not one of ...", a flag the user did not type)
    ("c.toml", 'device = "gpu"\n', ["--config", "c.toml: device: 'gpu' is not one of 'auto', 'cpu', 'cuda'"]),
    ("c.json", '{"epochs": "many"}', ["--config", "c.json: epochs: 'many' is not a valid integer"]),
    ("c.json", '{"loss": {"tau_s": 0}}', ["--config ", "c.json: loss.tau_s must be a finite number > 0"]),
])
def test_config_file_with_an_unknown_key_or_a_bad_value_names_the_file_and_the_key(cli, toy, tmp_path, name, text,
                                                                                  needles):
    cfg = tmp_path / name
    cfg.write_text(text)
    for cmd in ("distill", "compare"):
        res = cli(cmd, "--data", toy, "--source", "src", "--target", "tgt", "--config", cfg, "--out", tmp_path / "r")
        assert_one_line_error(res, 2, *needles)
        assert not (tmp_path / "r").exists()


def test_a_bad_flag_beside_a_config_file_is_named_as_the_flag(cli, toy, tmp_path):
    (tmp_path / "c.json").write_text('{"teacher_epochs": 2}')
    res = cli("distill", "--data", toy, "--source", "src", "--target", "tgt", "--config", tmp_path / "c.json",
              "--labeled-fraction", "2", "--out", tmp_path / "r")
    assert_one_line_error(res, 2, "Error: --labeled-fraction 2.0 is outside (0, 1]")
    res = cli("distill", "--data", toy, "--source", "src", "--target", "tgt", "--epochs", "0", "--out", tmp_path / "r")
    assert_one_line_error(res, 2, "Error: --epochs must be >= 1, got 0")


@pytest.mark.parametrize("view", ["src", "tgt"])
def test_nan_in_a_view_is_refused_before_training(cli, tmp_path, view):
    ds = synthetic_paired(tmp_path / "nan", n=300).root
    arr = np.load(ds / "views" / f"{view}.npy")
    arr[7, 1], arr[250, 0] = np.nan, np.inf
    np.save(ds / "views" / f"{view}.npy", arr)
    needles = [f"{view}.npy: NaN or Inf at row 7 and 1 more row"]
    assert_one_line_error(_distill(cli, ds, tmp_path / "r"), 2, *needles)
    assert not (tmp_path / "r").exists()  # without the check: a run trained on NaN statistics, ~chance accuracy
    assert_one_line_error(cli("select-teacher", "--data", ds, "--target", "tgt"), 2, *needles)


def test_distill_dataset_without_labels(cli, tmp_path):
    ds = synthetic_paired(tmp_path / "nolab", labels=False)
    assert_one_line_error(_distill(cli, ds.root, tmp_path / "r"), 2, "no labels")


def test_teacher_file_that_does_not_load(cli, toy, tmp_path):
    bad = tmp_path / "teacher.pt"
    bad.write_bytes(b"not a torchscript archive")
    assert_one_line_error(_distill(cli, toy, tmp_path / "r", "--teacher", bad), 2, "not a loadable TorchScript")
    assert_one_line_error(_distill(cli, toy, tmp_path / "r", "--teacher", "nosuch_mod:make"), 2, "No module named")
    assert not (tmp_path / "r").exists()  # refused before the run folder is made: a corrected rerun needs no --force


class _WrongBatch(torch.nn.Module):
    def forward(self, x):
        return x[:1]


class _Good(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 8)

    def forward(self, x):
        return self.lin(x)


def test_teacher_with_wrong_batch_size(cli, toy, tmp_path):
    path = tmp_path / "wrong.pt"
    save_torchscript(_WrongBatch(), path)
    assert_one_line_error(_distill(cli, toy, tmp_path / "r", "--teacher", path), 2, "expected [2, D]")
    assert not (tmp_path / "r").exists()


def test_teacher_file_errors_are_one_line_that_says_what_to_do(cli, toy, tmp_path):
    """Was: a TorchScript teacher fed rows of another width printed the interpreter's two stacks over 15 lines; a
    torch.save() file (a state_dict, or a whole pickled model: what users usually have) read only 'not a loadable
    TorchScript file (RuntimeError)'."""
    narrow = tmp_path / "narrow.pt"
    save_torchscript(torch.nn.Linear(12, 8), narrow)  # the source rows have 16 features
    res = _distill(cli, toy, tmp_path / "r", "--teacher", narrow, "--method", "cmd")
    assert_one_line_error(res, 2, f"--teacher {narrow}: fails on a source batch of shape [2, 16]: ",
                          "RuntimeError: mat1 and mat2 shapes cannot be multiplied (2x16 and 12x8)")
    assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 2  # the deprecation warning, the error
    net = torch.nn.Linear(16, 8)
    for name, obj in (("sd.pt", net.state_dict()), ("whole.pt", net), ("sd.pt2", net.state_dict())):
        torch.save(obj, tmp_path / name)
        res = _distill(cli, toy, tmp_path / "r", "--teacher", tmp_path / name, "--method", "cmd")
        assert_one_line_error(res, 2, f"--teacher {tmp_path / name}: a torch.save() file (a pickled model or "
                              "state_dict), which cmcd-edge does not unpickle: save the model as an ExportedProgram: "
                              "torch.export.save(")
    assert not (tmp_path / "r").exists()


def test_torchscript_teacher_without_logits(cli, toy, tmp_path, fast_cfg):
    path = tmp_path / "good.pt"
    save_torchscript(_Good(), path)
    res = _distill(cli, toy, tmp_path / "r", "--teacher", path, "--method", "cmd", cfg=fast_cfg)
    assert res.returncode == 0, res.stderr
    assert "TorchScript is deprecated" in res.stderr and "pass the .pt2" in res.stderr
    assert "teacher - (no logits)" in res.stdout  # was: 'teacher 0.0%'
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["teacher_test_accuracy"] is None
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["teacher"]["kind"] == "file" and len(run["teacher"]["sha256"]) == 64
    # kd needs logits, which this teacher does not give: the message names the methods that do without them
    for flags, what in ((("--method", "kd"), "--method kd"), ((), "--method cmcd"),
                        (("--recipe", "1.0*cmd+0.5*kd+1.0*ce"), "--recipe 1.0*cmd+0.5*kd+1.0*ce")):
        assert_one_line_error(_distill(cli, toy, tmp_path / "r2", "--teacher", path, *flags), 2,
                              f"{what}: needs teacher logits (its kd term); --teacher {path} gives embeddings only: "
                              "use a method without kd (cmd, cmc, fitnet, rkd, crd, supervised) or a --recipe without it")
        assert not (tmp_path / "r2").exists()


def test_teacher_logits_over_other_classes_are_named_where_kd_needs_them(cli, toy, tmp_path, monkeypatch):
    """Was: after the warning that they were ignored, the error said the teacher gives 'embeddings only', and came
    after the teacher had run over every row."""
    (tmp_path / "three_class_teacher.py").write_text(
        f"import pathlib\nSEEN = pathlib.Path({str(tmp_path / 'rows.txt')!r})\n"
        "def make():\n"
        "    def run(x):\n"
        "        SEEN.write_text(str(int(SEEN.read_text() if SEEN.exists() else 0) + len(x)))\n"
        "        return x[:, :8], x[:, :3]\n"
        "    return run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = _distill(cli, toy, tmp_path / "r", "--teacher", "three_class_teacher:make")
    assert "teacher logits have 3 classes, the data 4: logits ignored" in res.stderr
    assert (tmp_path / "rows.txt").read_text() == "2"  # refused on the probe (was: after a pass over all 600 rows)
    assert_one_line_error(res, 2, "--method cmcd: needs teacher logits (its kd term); --teacher three_class_teacher:make "
                          "gives logits over 3 classes, not the data's 4: use a method without kd")


def test_source_auto_with_a_teacher_file_is_refused_before_ranking(cli, toy, tmp_path):
    """Was: --source auto ranked every candidate view (minutes on real data), then fed the --teacher file, a model of
    one view, the rows of whichever view won."""
    path = tmp_path / "good.pt2"
    save_exported(_Good().eval(), path)
    for cmd in ("distill", "compare"):
        res = cli(cmd, "--data", toy, "--source", "auto", "--target", "tgt", "--teacher", path, "--out", tmp_path / cmd)
        assert_one_line_error(res, 2, f"--source auto: ranks views to train a teacher on, but --teacher {path} is a "
                              "model of one view: name that view with --source")
        assert "CCH" not in res.stdout and not (tmp_path / cmd).exists()


class _NearestMean(torch.nn.Module):
    """A teacher that returns (embedding, logits): logits of the nearest class mean of the source rows."""

    def __init__(self, means: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means)  # (K, 16)
        self.lin = torch.nn.Linear(16, 8)

    def forward(self, x):
        return self.lin(x), x @ self.means.T - 0.5 * (self.means ** 2).sum(1)  # (B, 8), (B, K)


def _class_means(toy) -> torch.Tensor:
    from cmcd_edge import datasets

    ds = datasets.load(toy)
    x, y = np.asarray(ds.view("src"), np.float32), np.asarray(ds.labels)
    return torch.from_numpy(np.stack([x[y == k].mean(0) for k in range(ds.n_classes)]))


def test_exported_program_teacher_gives_embedding_and_logits(cli, toy, tmp_path, fast_cfg):
    path = tmp_path / "teacher.pt2"
    save_exported(_NearestMean(_class_means(toy)).eval(), path)
    res = _distill(cli, toy, tmp_path / "r", "--teacher", path, "--method", "kd", cfg=fast_cfg)  # kd needs logits
    assert res.returncode == 0, res.stderr
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["teacher"]["kind"] == "file" and run["teacher"]["path"] == str(path.resolve())
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["teacher_test_accuracy"] > 0.9  # its logits


def test_exported_program_teacher_with_a_fixed_batch_is_refused(cli, toy, tmp_path):
    path = tmp_path / "teacher.pt2"
    save_exported(_Good().eval(), path, dynamic=False)
    assert_one_line_error(_distill(cli, toy, tmp_path / "r", "--teacher", path), 2, "fixed batch of 4")
    assert not (tmp_path / "r").exists()


def test_factory_teacher_is_built_by_the_users_function(toy, tmp_path, fast_cfg):
    torch.save(_class_means(toy), tmp_path / "means.pt")
    (tmp_path / "my_teacher.py").write_text(  # the user's own module, found on PYTHONPATH
        "import torch\n"
        "def make():\n"
        f"    means = torch.load({str(tmp_path / 'means.pt')!r}, weights_only=True)\n"
        "    return lambda x: {'embedding': x[:, :8], 'logits': x @ means.T - 0.5 * (means ** 2).sum(1)}\n")
    res = run_cli("distill", "--data", toy, "--source", "src", "--target", "tgt", "--epochs", "3", "--method", "kd",
                  "--teacher", "my_teacher:make", "--out", tmp_path / "r", "--config", fast_cfg,
                  env={"PYTHONPATH": str(tmp_path)})  # a real process: the user's module is found on PYTHONPATH
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "r" / "run.json").read_text())["teacher"] == {
        "kind": "factory", "ref": "my_teacher:make", "view": "src",
        "sha256": hashlib.sha256((tmp_path / "my_teacher.py").read_bytes()).hexdigest()}  # the module's, for --resume
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["teacher_test_accuracy"] > 0.9


def test_existing_run_refused_and_untouched(cli, toy, tmp_path, fast_cfg):
    out = tmp_path / "run"
    assert _distill(cli, toy, out, cfg=fast_cfg).returncode == 0
    before = (out / "student.safetensors").read_bytes()
    assert_one_line_error(_distill(cli, toy, out, cfg=fast_cfg), 2, "--force")
    assert_one_line_error(_distill(cli, toy, out, "--resume", "--force", cfg=fast_cfg), 2,  # was: --force ignored
                          "--resume and --force", "pass one")
    assert_one_line_error(_distill(cli, toy, out, "--seed", "5", "--resume", cfg=fast_cfg), 2, "different config", "seed")
    assert (out / "student.safetensors").read_bytes() == before
    run = json.loads((out / "run.json").read_text())
    run["recipe"] = "Loss = 1.0 * cmd + 1.0 * ce"  # as if the method's default recipe changed since
    (out / "run.json").write_text(json.dumps(run))
    assert_one_line_error(_distill(cli, toy, out, "--resume", cfg=fast_cfg), 2, "'Loss = 1.0 * cmd + 1.0 * ce'",
                          "default recipe changed", "--force")
    del run["recipe"]  # a run.json from before the recipe was recorded
    (out / "run.json").write_text(json.dumps(run))
    assert_one_line_error(_distill(cli, toy, out, "--resume", cfg=fast_cfg), 2, "older version", "--force")
    assert (out / "student.safetensors").read_bytes() == before


@pytest.mark.parametrize("kind,shape", [("sequence", (3, 64)), ("image", (1, 12, 12))])
def test_sequence_and_image_students_learn_and_export(kind, shape, tmp_path):
    pytest.importorskip("onnxscript")
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill

    ds = synthetic_paired(tmp_path / kind, kind, n=400, target_shape=shape)
    cfg = DistillConfig(data=str(ds.root), source="src", target="tgt", epochs=8, teacher_epochs=10, finetune_epochs=3,
                        batch_size=64, labeled_fraction=0.2)
    res = run_distill(cfg, tmp_path / "run")
    assert res.metrics["test_accuracy"] > 0.5, res.metrics  # chance is 0.25
    assert res.metrics["student"] == {"sequence": "cnn1d", "image": "cnn2d"}[kind]
    import onnxruntime as ort

    from cmcd_edge.export.onnx_export import export_fp32, load_run, parity
    from cmcd_edge.runtime.session import run_batched

    run = load_run(tmp_path / "run")  # rebuilt from student.json + safetensors, as export does
    x = np.array(ds.view("tgt")[:64], np.float32)
    export_fp32(run.net, shape, tmp_path / "s.onnx", example=x)
    sess = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    check = parity(run.net, run_batched(sess, x, output="logits"), x)
    assert check["top1_agreement"] == 1.0 and check["max_abs_rel"] < 1e-4, check


def test_a_relative_data_path_is_recorded_absolute_so_export_runs_from_anywhere(toy, tmp_path, monkeypatch):
    """run.json kept --data as typed: a run made with `--data my-data` from one folder could not be exported (or
    benchmarked on its data) from another ('my-data: no such dataset folder')."""
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill
    from cmcd_edge.distill.run_record import resume_refusal
    from cmcd_edge.export.onnx_export import load_run

    monkeypatch.chdir(toy.parent)
    cfg = DistillConfig(data=toy.name, source="src", target="tgt", epochs=1, teacher_epochs=1, finetune_epochs=1)
    run_distill(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["config"]["data"] == str(toy.resolve())
    assert resume_refusal(tmp_path / "run", cfg) is None  # the same data typed relatively still resumes
    monkeypatch.chdir(tmp_path)
    assert datasets.load(load_run(tmp_path / "run").run_json["config"]["data"]).root == toy.resolve()
