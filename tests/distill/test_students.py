from __future__ import annotations

import pytest
import torch

from cmcd_edge.distill import students
from cmcd_edge.distill.students import NetSpec
from cmcd_edge.errors import UserError

SHAPES = {"mlp": (47,), "cnn1d": (6, 64), "cnn2d": (3, 32, 32)}


@pytest.mark.parametrize("arch", students.STUDENTS.names())
def test_student_shapes_and_gradient(arch):
    net = students.build(NetSpec(arch, SHAPES[arch], num_classes=5, embed_dim=16, width=32))
    x = torch.randn(4, *SHAPES[arch])
    logits, emb = net.forward_both(x)
    assert logits.shape == (4, 5) and emb.shape == (4, 16)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


@pytest.mark.parametrize("arch", students.STUDENTS.names())
def test_student_rebuilds_from_json_spec(arch):
    spec = NetSpec(arch, SHAPES[arch], num_classes=5)
    a = students.build(spec)
    b = students.build(NetSpec.from_json(spec.to_json()))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(2, *SHAPES[arch])
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("arch", students.STUDENTS.names())
def test_student_exports_to_onnx(arch, tmp_path):
    """Through export's own exporter (its graph rewrites and full onnx check included): ORT matches torch."""
    pytest.importorskip("onnxscript")
    import numpy as np
    import onnxruntime as ort

    from cmcd_edge.export.onnx_export import INPUT, export_fp32

    net = students.build(NetSpec(arch, SHAPES[arch], num_classes=5)).eval()
    x = torch.randn(3, *SHAPES[arch])
    path = tmp_path / "m.onnx"
    export_fp32(net, SHAPES[arch], path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, emb = sess.run(None, {INPUT: x.numpy()})
    want_logits, want_emb = (t.detach().numpy() for t in net.forward_both(x))
    np.testing.assert_allclose(logits, want_logits, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(emb, want_emb, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind,shape", [("vector", (216,)), ("vector", (47,)), ("vector", (6,)), ("image", (1, 16, 15))])
def test_default_students_are_edge_sized_on_mfeat(kind, shape):
    net = students.build(students.default_spec(kind, shape, 10))
    size = students.measure(net, shape)
    assert size.params <= 100_000 and size.macs > 0


def test_mlp_rejects_image_shape():
    with pytest.raises(UserError, match="mlp takes vector"):
        students.build(NetSpec("mlp", (1, 16, 15), 10))


def test_unknown_arch_lists_valid():
    with pytest.raises(UserError, match="valid: mlp, cnn1d, cnn2d"):
        NetSpec("resnet", (4,), 2)


def test_train_layout_is_channels_last_for_images_only_and_the_same_function():
    torch.manual_seed(0)
    img = students.build(students.default_spec("image", (1, 16, 15), 10)).eval()
    x = torch.randn(4, 1, 16, 15)
    before = img(x)
    fast = students.train_layout(img)
    maps = []
    stem = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    stem.register_forward_hook(lambda mod, inp, out: maps.append(out))
    after = fast(x)
    assert maps[0].is_contiguous(memory_format=torch.channels_last) and not maps[0].is_contiguous()
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    vec = students.build(students.default_spec("vector", (47,), 10))
    assert students.train_layout(vec) is vec


def test_spec_with_an_unknown_key_names_it_with_a_close_match():
    d = {**NetSpec("mlp", (4,), 3).to_json(), "widht": 8}
    with pytest.raises(UserError, match=r"network spec: unknown key 'widht' \(did you mean 'width'\?\); valid: arch"):
        NetSpec.from_json(d)


@pytest.mark.parametrize("arch,shape,stride", [("cnn1d", (3, 16), 1), ("cnn1d", (3, 31), 1), ("cnn1d", (3, 32), 2),
                                               ("cnn2d", (1, 16, 15), 1), ("cnn2d", (3, 48, 31), 1),
                                               ("cnn2d", (3, 32, 40), 2)])
def test_conv_stem_strides_2_from_32_steps_or_pixels_on_the_short_side(arch, shape, stride):
    """Was: cnn1d's stem strided 2 at every length, so a 16-step sequence reached its blocks as 8 steps and left them
    as 2 (benchmarks/cnn1d_stem.py: a [3, 16] student gained several points with stride 1)."""
    spec = NetSpec(arch, shape, num_classes=3)
    stem = students.build(spec).encoder[0]
    assert spec.stem_stride == stride and stem.stride == (stride,) * (len(shape) - 1)
    assert NetSpec.from_json(spec.to_json()) == spec


def test_spec_saved_before_it_held_the_stem_stride_builds_the_network_of_its_time():
    """student.json / teacher.json written before session 35 have no stem_stride: a cnn1d one is read with the stride
    2 its code built at every length (was: rebuilt with today's rule, whose weights load into another network), a
    cnn2d one by the size rule, unchanged; a vector spec still writes no stem_stride."""
    def saved_before(spec: NetSpec) -> dict:
        return {k: v for k, v in spec.to_json().items() if k != "stem_stride"}

    assert NetSpec.from_json(saved_before(NetSpec("cnn1d", (3, 16), 3))).stem_stride == 2
    assert NetSpec.from_json(saved_before(NetSpec("cnn2d", (1, 16, 15), 3))).stem_stride == 1
    assert NetSpec.from_json(saved_before(NetSpec("cnn2d", (3, 64, 64), 3))).stem_stride == 2
    assert "stem_stride" not in NetSpec("mlp", (47,), 3).to_json()
    with pytest.raises(UserError, match="stem_stride must be 1 or 2, got 3"):
        NetSpec("cnn1d", (3, 16), 3, stem_stride=3)


SMALL = {"cnn1d": (4, 2), "cnn2d": (1, 3, 3)}  # a conv layer on these reads mostly padding


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_conv_student_on_a_small_input_is_not_constant_in_eval_mode_after_a_few_steps(arch):
    """Running statistics start from the first batches, not from torch's initial variance of 1 (which made every
    row give the same logits, and chance accuracy, on a few hundred rows)."""
    torch.manual_seed(0)
    net = students.build(NetSpec(arch, SMALL[arch], num_classes=2))
    x = torch.randn(64, *SMALL[arch])
    net.train()
    for _ in range(2):
        net(x)
    with torch.no_grad():
        train_mode = net.embed(x).std(0).mean()
        net.eval()
        eval_mode = net.embed(x).std(0).mean()
    assert eval_mode > 0.3 * train_mode, (float(eval_mode), float(train_mode))


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_conv_student_running_stats_average_the_first_batches_then_move_and_resume(arch):
    torch.manual_seed(0)
    spec = NetSpec(arch, SMALL[arch], num_classes=2)
    net = students.build(spec).train()
    stem = next(m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    seen = []
    stem.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().transpose(0, 1).flatten(1).var(1)))
    batches = [torch.randn(16, *SMALL[arch]) for _ in range(14)]
    for b in batches[:3]:
        net(b)
    torch.testing.assert_close(stem.running_var, torch.stack(seen).mean(0))  # a plain mean so far
    for b in batches[3:12]:
        net(b)
    assert stem.momentum == pytest.approx(0.1) and not stem.warming
    resumed = students.build(spec).train()
    resumed.load_state_dict(net.state_dict())
    for b in batches[12:]:
        net(b), resumed(b)
    for a, b in zip(net.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
