"""``--teacher FILE.onnx``: real ONNX files (written with onnx.helper) run by onnxruntime over the source view."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from cmcd_edge.distill import user_teacher
from cmcd_edge.errors import UserError
from cmcd_edge.splitting import make_splits
from tests.helpers import assert_one_line_error, save_onnx_linear, synthetic_paired

RNG = np.random.default_rng(0)
W, B = RNG.normal(size=(8, 16)).astype(np.float32), RNG.normal(size=8).astype(np.float32)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return synthetic_paired(tmp_path_factory.mktemp("onnx") / "d", n=120)  # src: (120, 16) rows, 4 classes


@pytest.mark.parametrize("batch", [None, 1, 7])
def test_onnx_teacher_embeds_every_row_as_its_graph_computes(batch, ds, tmp_path):
    """A dynamic batch, and graphs fixed at 1 row and at 7 (120 rows: the last chunk padded, its padding dropped)."""
    path = save_onnx_linear(W, B, tmp_path / "t.onnx", batch=batch)
    out = user_teacher.load_teacher(str(path), ds, "src", make_splits(ds, 0), torch.device("cpu"))
    x = np.asarray(ds.view("src"), np.float32)
    np.testing.assert_allclose(out.emb.numpy(), x @ W.T + B, rtol=1e-5, atol=1e-5)
    assert out.logits is None and out.test_accuracy is None and out.info["kind"] == "file"
    assert out.info["sha256"] == user_teacher.teacher_sha256(str(path))


@pytest.mark.parametrize("outputs,reverse", [(("embedding", "logits"), False), (("embedding", "logits"), True),
                                             (("feat", "logits"), True), (("e", "l"), False)])
def test_onnx_teacher_reads_logits_by_name_or_second(outputs, reverse, ds, tmp_path):
    """Named outputs are taken by name whatever their order in the graph (a 'logits' beside one other name: that is
    the embedding); unnamed ones in order: embedding, then logits."""
    path = save_onnx_linear(W, B, tmp_path / "t.onnx", outputs=outputs, logits_of=4)
    if reverse:  # the graph lists the logits first
        model = onnx.load(str(path))
        first, second = list(model.graph.output)
        del model.graph.output[:]
        model.graph.output.extend([second, first])
        onnx.save(model, str(path))
    out = user_teacher.load_teacher(str(path), ds, "src", make_splits(ds, 0), torch.device("cpu"))
    x = np.asarray(ds.view("src"), np.float32)
    np.testing.assert_allclose(out.logits.numpy(), x[:, :4] * 3, rtol=1e-6)
    assert out.emb.shape == (120, 8) and out.test_accuracy is not None  # scored on the test split


def test_onnx_teacher_bad_files_get_one_line(ds, tmp_path):
    splits, cpu = make_splits(ds, 0), torch.device("cpu")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match=r"^--teacher .*junk\.onnx: onnxruntime cannot load it \("):
        user_teacher.load_teacher(str(tmp_path / "junk.onnx"), ds, "src", splits, cpu)
    wide = save_onnx_linear(RNG.normal(size=(8, 32)).astype(np.float32), B, tmp_path / "wide.onnx")
    with pytest.raises(UserError, match=r"fails on a source batch of shape \[2, 16\]: its input 'x' takes rows of "
                                        r"shape \[32\], the source rows are \[16\]$"):
        user_teacher.load_teacher(str(wide), ds, "src", splits, cpu)
    with pytest.raises(UserError, match=r"missing\.onnx: no such file"):
        user_teacher.load_teacher(str(tmp_path / "missing.onnx"), ds, "src", splits, cpu)
    for name, graph, says in [("two_in", _identity_graph(inputs=2, outputs=1), r"the graph takes 2 inputs \(x0, x1\); "
                                                                              r"a teacher takes one, the source batch$"),
                              ("three_out", _identity_graph(inputs=1, outputs=3), r"the graph has 3 outputs \(y0, y1, "
                                                                                 r"y2\); name them 'embedding'")]:
        onnx.save(graph, str(tmp_path / f"{name}.onnx"))
        with pytest.raises(UserError, match=says):
            user_teacher.load_teacher(str(tmp_path / f"{name}.onnx"), ds, "src", splits, cpu)


def _identity_graph(inputs: int, outputs: int):
    """A graph of Identity nodes: ``inputs`` inputs x0.. of (batch, 16), ``outputs`` outputs y0.. copying x0."""
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, ["batch", 16]) for i in range(inputs)]
    outs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["batch", 16]) for i in range(outputs)]
    nodes = [helper.make_node("Identity", ["x0"], [f"y{i}"]) for i in range(outputs)]
    return helper.make_model(helper.make_graph(nodes, "g", ins, outs), opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=9)


def test_distill_from_an_onnx_teacher_and_resume_refuses_it_replaced(ds, tmp_path, cli):
    """End to end through the CLI: the run records the file's sha256; kd reads its logits; a file saved over it since
    the run started is refused on --resume, as a .pt2's is."""
    path = save_onnx_linear(W, B, tmp_path / "t.onnx", outputs=("embedding", "logits"), logits_of=4)
    args = ("distill", "--data", ds.root, "--source", "src", "--target", "tgt", "--teacher", path, "--method", "kd",
            "--epochs", "2", "--out", tmp_path / "run")
    res = cli(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["teacher"]["sha256"] == user_teacher.teacher_sha256(str(path))
    (tmp_path / "run" / "metrics.json").unlink()  # as if killed before its last write
    save_onnx_linear(W * 2, B, path, outputs=("embedding", "logits"), logits_of=4)
    assert_one_line_error(cli(*args, "--resume"), 2, f"--resume: --teacher {path} changed since", "its file")


def test_onnx_teacher_sha256_covers_its_external_data(tmp_path):
    """Weights saved beside an unchanged graph (onnx's external data) are another teacher: the graph file's bytes
    alone stay the same."""
    def saved(weight):
        model = onnx.load(str(save_onnx_linear(weight, B, tmp_path / "in.onnx")))
        (tmp_path / "t.onnx.data").unlink(missing_ok=True)  # onnx.save appends to a data file already there
        onnx.save(model, str(tmp_path / "t.onnx"), save_as_external_data=True, location="t.onnx.data",
                  size_threshold=0)
        return (tmp_path / "t.onnx").read_bytes(), user_teacher.teacher_sha256(str(tmp_path / "t.onnx"))

    graph0, sha0 = saved(W)
    graph1, sha1 = saved(W * 2)
    assert graph0 == graph1 and sha0 != sha1
    small = synthetic_paired(tmp_path / "d", n=40)
    out = user_teacher.load_teacher(str(tmp_path / "t.onnx"), small, "src", make_splits(small, 0), torch.device("cpu"))
    x = np.asarray(small.view("src"), np.float32)
    np.testing.assert_allclose(out.emb.numpy(), x @ (W * 2).T + B, rtol=1e-5, atol=1e-5)  # its weights read


def test_onnx_teacher_says_it_runs_on_the_cpu_where_onnxruntime_has_no_cuda(tmp_path, caplog):
    from cmcd_edge.distill.onnx_teacher import OnnxTeacher
    from cmcd_edge.runtime.session import available_backends

    if "cuda" in available_backends():
        pytest.skip("this onnxruntime has the CUDA provider: the teacher runs there")
    path = save_onnx_linear(W, B, tmp_path / "t.onnx")
    OnnxTeacher(path, torch.device("cuda"))  # a device object only: nothing is moved to it here
    assert "this onnxruntime has no CUDA provider (onnxruntime-gpu has); the teacher runs on the CPU" in caplog.text


def test_onnx_teacher_takes_uint8_images_in_its_own_input_dtype(tmp_path):
    """A camera model exported to take uint8 pixels: the stored values (0-255, [B, C, H, W]) reach it as uint8,
    unchanged, as they reach a .pt2 teacher as float32."""
    from onnx import TensorProto, helper

    from cmcd_edge import datasets
    from cmcd_edge.datasets import ViewSpec

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(60, 3, 4, 5), dtype=np.uint8)
    ds = datasets.write_dataset(tmp_path / "d", {"cam": ViewSpec(img, "image"),
                                                 "vec": ViewSpec(rng.normal(size=(60, 3)).astype(np.float32), "vector")},
                                np.arange(60) % 3, ["a", "b", "c"])
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT), helper.make_node("Flatten", ["xf"], ["embedding"])],
        "cam", [helper.make_tensor_value_info("x", TensorProto.UINT8, ["batch", 3, 4, 5])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 60])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(tmp_path / "c.onnx"))
    out = user_teacher.load_teacher(str(tmp_path / "c.onnx"), ds, "cam", make_splits(ds, 0), torch.device("cpu"))
    assert torch.equal(out.emb, torch.from_numpy(img.reshape(60, -1).astype(np.float32)))


def test_onnx_teacher_takes_torchs_share_of_the_cores(tmp_path, monkeypatch):
    """Under torchrun each rank's torch has one thread; onnxruntime's default would take every core in every rank."""
    from cmcd_edge.distill.onnx_teacher import OnnxTeacher

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    t = OnnxTeacher(save_onnx_linear(W, B, tmp_path / "t.onnx"), torch.device("cpu"))
    assert t.session.get_session_options().intra_op_num_threads == 1


def test_onnx_teacher_of_channels_last_images_is_refused_with_the_transpose_hint(tmp_path):
    """A TensorFlow camera model takes [B, H, W, C]; the view is [B, C, H, W]: one line naming both, and the fix."""
    from onnx import TensorProto, helper

    from cmcd_edge import datasets
    from cmcd_edge.datasets import ViewSpec

    rng = np.random.default_rng(2)
    ds = datasets.write_dataset(tmp_path / "d", {"cam": ViewSpec(rng.random((40, 3, 8, 8), np.float32), "image"),
                                                 "vec": ViewSpec(rng.normal(size=(40, 3)).astype(np.float32), "vector")},
                                np.arange(40) % 2, ["a", "b"])
    graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["embedding"])], "nhwc",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 8, 3])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 192])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(tmp_path / "t.onnx"))
    with pytest.raises(UserError, match=r"its input 'x' takes rows of shape \[8, 8, 3\], the source rows are \[3, 8, 8\] "
                                        r"\(a channels-last graph: tf2onnx --inputs-as-nchw transposes it\)$"):
        user_teacher.load_teacher(str(tmp_path / "t.onnx"), ds, "cam", make_splits(ds, 0), torch.device("cpu"))


def test_onnx_teacher_out_of_memory_halves_the_teacher_batch(ds, tmp_path, monkeypatch, caplog):
    """onnxruntime's arena error under its CUDA provider ('Failed to allocate memory for requested buffer') becomes
    torch's out-of-memory error, so the teacher pass halves its batch as for a torch teacher; other errors pass as
    they are. (Raised by a wrapped session here: no GPU in CI.)"""
    from cmcd_edge.distill import onnx_teacher

    class RuntimeException(Exception):  # onnxruntime's own type, by name
        pass

    made = onnx_teacher.OnnxTeacher.__init__

    def small_gpu(self, path, device):
        made(self, path, device)
        real = self.session

        class Session:
            def __getattr__(self, name):
                return getattr(real, name)

            def run(self, names, feed):
                if len(next(iter(feed.values()))) > 30:
                    raise RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned "
                                           "while running Gemm node. Failed to allocate memory for requested buffer "
                                           "of size 1073741824")
                return real.run(names, feed)

        self.session = Session()

    monkeypatch.setattr(onnx_teacher.OnnxTeacher, "__init__", small_gpu)
    path = save_onnx_linear(W, B, tmp_path / "t.onnx")
    caplog.set_level("WARNING", logger="cmcd_edge.distill.teachers")
    out = user_teacher.load_teacher(str(path), ds, "src", make_splits(ds, 0), torch.device("cpu"))
    src = torch.from_numpy(np.array(ds.view("src")[:], np.float32))
    torch.testing.assert_close(out.emb, src @ torch.from_numpy(W).T + torch.from_numpy(B))
    assert [r.getMessage() for r in caplog.records] == ["teacher: out of GPU memory at 120 rows a batch: going on "
                                                        "with 60", "teacher: out of GPU memory at 60 rows a batch: "
                                                        "going on with 30"]
