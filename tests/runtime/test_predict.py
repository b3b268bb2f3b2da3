"""cmcd-edge predict: output formats (.json, .csv, .npz), a large input read in slices, and the errors that name the
input's row."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from cmcd_edge.runtime import Predictor
from cmcd_edge.runtime.errors import UserError
from tests.helpers import assert_one_line_error


def _samples(p: Predictor, n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *p.input_shape)).astype(np.float32)


@pytest.mark.parametrize("suffix", [".json", ".csv", ".npz"])
def test_predict_out_formats_hold_what_the_predictor_gives_read_in_slices(toy_bundle, tmp_path, suffix):
    """Was: JSON only, built whole in memory (200,000 rows of a 47-feature view: 784 MB peak, a 56 MB file); .csv and
    .npz are what a table or numpy reads back, and the input is read 64 rows a call here (4096 by default)."""
    from cmcd_edge.predictcli import run_predict

    p = Predictor.load(toy_bundle, variant="fp32")
    x = _samples(p, 300)
    np.save(tmp_path / "x.npy", x)
    names, probs = p.classify(x)
    out = tmp_path / f"p{suffix}"
    run_predict(str(toy_bundle), str(tmp_path / "x.npy"), variant="fp32", backend="cpu", out=str(out), top=3,
                allow_nonfinite=False, chunk_rows=64)
    if suffix == ".json":
        rows = json.loads(out.read_text())["predictions"]
        got_names = [r["class"] for r in rows]
        got = np.array([[r["probabilities"][c] for c in p.classes] for r in rows])
    elif suffix == ".csv":
        with out.open(newline="") as f:
            table = list(csv.reader(f))
        assert table[0] == ["sample", "class", *p.classes]
        assert [int(r[0]) for r in table[1:]] == list(range(300))
        got_names = [r[1] for r in table[1:]]
        got = np.array([[float(v) for v in r[2:]] for r in table[1:]])
    else:
        with np.load(out, allow_pickle=False) as z:
            assert list(z["classes"]) == list(p.classes)
            assert (z["predicted"] == probs.argmax(1)).all()
            got_names = [p.classes[i] for i in z["predicted"]]
            got = z["probabilities"]
    assert got_names == names
    np.testing.assert_allclose(got, probs, atol=1e-6)


def test_predict_nan_is_named_by_its_row_in_the_file(toy_bundle, tmp_path):
    """Read in slices, a NaN must still be named by its row in the file, not in the slice, with how many more."""
    from cmcd_edge.predictcli import run_predict

    x = _samples(Predictor.load(toy_bundle), 300)
    x[[130, 250, 251], 0] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(UserError, match=r"nan\.npy: input contains NaN or Inf in sample 130 and 2 more "):
        run_predict(str(toy_bundle), str(tmp_path / "nan.npy"), variant="auto", backend="cpu",
                    out=str(tmp_path / "p.csv"), top=3, allow_nonfinite=False, chunk_rows=64)
    assert not (tmp_path / "p.csv").exists()


def test_predict_out_of_another_kind_is_refused_before_loading(toy_bundle, cli, tmp_path):
    res = cli("predict", toy_bundle, tmp_path / "missing.npy", "--out", tmp_path / "p.txt")
    assert_one_line_error(res, 2, f"--out {tmp_path / 'p.txt'}: write .json, .csv or .npz")  # not 'no such file'


@pytest.mark.parametrize("shape,needle", [
    ((), "input shape [] does not match the bundle's [8] (one sample) or [batch, 8]"),
    ((2, 3, 8), "input shape [2, 3, 8] does not match"),
    ((0, 8), "empty batch: the input has 0 samples"),
])
def test_predict_input_neither_a_sample_nor_a_batch_is_named_whole(toy_bundle, cli, tmp_path, shape, needle):
    """Read in slices, the input is still checked whole: its own shape is named, not a slice's."""
    np.save(tmp_path / "x.npy", np.zeros(shape, np.float32))
    assert_one_line_error(cli("predict", toy_bundle, tmp_path / "x.npy"), 2, f"x.npy: {needle}")


def test_predict_top_with_out_is_refused(toy_bundle, cli, tmp_path):
    """Was: `--top 2 --out p.csv` wrote every class's probability, and --top did nothing, without a word."""
    res = cli("predict", toy_bundle, tmp_path / "x.npy", "--top", "2", "--out", tmp_path / "p.csv")
    assert_one_line_error(res, 2, "--top 2: sets the classes printed per sample; --out writes every class's "
                          "probability; drop one")
    assert not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize("name", ["class", "sample"])
def test_predict_csv_refuses_a_class_named_like_a_header_column(toy_bundle, cli, tmp_path, name):
    """Was: a class named 'class' gave the header `sample,class,class,c1,...`, which reads back as another table
    (pandas renames the second 'class.1', and the predicted class and that class's probability swap places for
    csv.DictReader). .json and .npz name classes apart from their own keys, so they still write."""
    bundle = tmp_path / "b"
    shutil.copytree(toy_bundle, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["classes"][1] = name
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 8), np.float32))
    res = cli("predict", bundle, x, "--out", tmp_path / "p.csv")
    assert_one_line_error(res, 2, f"--out {tmp_path / 'p.csv'}: class '{name}' would repeat a column of the CSV header "
                          "(sample, class, then one per class); write .json or .npz")
    assert not (tmp_path / "p.csv").exists()
    assert cli("predict", bundle, x, "--out", tmp_path / "p.npz").returncode == 0


def test_predict_reads_samples_saved_without_their_one_channel_axis(cli, tmp_path):
    """Was refused ('the channel axis (1) is missing'): depth maps [N, H, W], the array `data from-arrays --view
    d=x.npy:image` takes, for the [1, H, W] bundle made from it. A batch and a single map both read as one channel, as
    the same samples with the axis would; a [N, H, W + 1] array is still refused."""
    from cmcd_edge.distill.config import DistillConfig
    from cmcd_edge.distill.pipeline import run_distill
    from cmcd_edge.export.bundle import ExportConfig, run_export
    from tests.helpers import synthetic_paired

    ds = synthetic_paired(tmp_path / "data", "image", n=160, target_shape=(1, 8, 8))
    run_distill(DistillConfig(data=str(ds.root), source="src", target="tgt", method="supervised", epochs=1,
                              finetune="none"), tmp_path / "run")
    run_export(ExportConfig(run=str(tmp_path / "run"), out=str(tmp_path / "b"), int8=False))
    maps = np.random.default_rng(0).normal(size=(5, 8, 8)).astype(np.float32)
    np.save(tmp_path / "with.npy", maps[:, None])
    np.save(tmp_path / "batch.npy", maps)
    np.save(tmp_path / "one.npy", maps[3])
    want = cli("predict", tmp_path / "b", tmp_path / "with.npy")
    assert want.returncode == 0, want.stderr
    batch = cli("predict", tmp_path / "b", tmp_path / "batch.npy")
    assert batch.returncode == 0 and batch.stdout == want.stdout
    assert "batch.npy: read as one channel, [5, 1, 8, 8]" in batch.stderr
    one = cli("predict", tmp_path / "b", tmp_path / "one.npy")
    assert one.returncode == 0 and one.stdout.strip() == "0:" + want.stdout.splitlines()[3].split(":", 1)[1]
    np.save(tmp_path / "wide.npy", np.zeros((5, 8, 9), np.float32))
    assert_one_line_error(cli("predict", tmp_path / "b", tmp_path / "wide.npy"), 2,
                          "wide.npy: input shape [5, 8, 9] does not match the bundle's [1, 8, 8]")
