"""ViewRows: a view preloaded or read batch by batch from its memory map gives the same values, and the same run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmcd_edge.distill import engine, rows, students
from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.pipeline import run_distill
from cmcd_edge.errors import UserError
from tests.helpers import synthetic_paired

CPU = torch.device("cpu")


@pytest.mark.parametrize("dtype", [np.uint8, np.float16, np.float32])
def test_rows_streamed_equal_preloaded(tmp_path, dtype):
    arr = (np.random.default_rng(0).random((50, 3, 4, 5)) * 200).astype(dtype)
    np.save(tmp_path / "v.npy", arr)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    full, lazy = rows.ViewRows(mapped, CPU, preload=True), rows.ViewRows(mapped, CPU, preload=False)
    assert full.preloaded and not lazy.preloaded
    idx = torch.tensor([7, 3, 3, 49, 0, 7])  # unsorted, with repeats (the teacher samples with replacement)
    for key in (idx, slice(10, 20), slice(45, 60)):
        a, b = full[key], lazy[key]
        assert a.dtype == b.dtype == torch.float32
        assert torch.equal(a, b)
    assert torch.equal(lazy[idx][1], torch.from_numpy(arr[3].astype(np.float32)))
    assert len(lazy) == 50 and lazy.shape == (50, 3, 4, 5)


def test_should_preload_by_mode_and_budget(monkeypatch):
    assert rows.should_preload(10**15, CPU, "always")
    assert not rows.should_preload(1, CPU, "never")
    monkeypatch.setattr(rows, "available_bytes", lambda device: 1000)
    assert rows.should_preload(400, CPU, "auto")  # 40% of 1000
    assert not rows.should_preload(401, CPU, "auto")
    assert not rows.should_preload(300, CPU, "auto", ranks=2)  # each rank gets its share
    with pytest.raises(UserError, match="preload 'sometimes'; valid: auto, always, never"):
        rows.should_preload(1, CPU, "sometimes")


def test_available_bytes_reads_this_machine():
    assert rows.available_bytes(CPU) > 64 << 20


def test_predict_logits_rows_batched_equal_whole():
    net = students.build(students.default_spec("vector", (8,), 3)).eval()
    x = torch.randn(40, 8)
    sel = torch.tensor([5, 1, 30, 2, 2, 39, 17])
    assert torch.equal(engine.predict_logits(net, x, sel, batch=3), engine.predict_logits(net, x[sel], batch=3))


@pytest.mark.parametrize("kind,shape,role,cpu,cuda", [("vector", (216,), "teacher", 1024, 1024),
                                                     ("sequence", (6, 128), "teacher", 512, 1024),
                                                     ("image", (3, 64, 64), "student", 32, 1024),
                                                     ("image", (3, 224, 224), "teacher", 16, 41)])
def test_eval_batch_keeps_the_largest_activation_within_the_device_budget(kind, shape, role, cpu, cuda):
    spec = students.default_spec(kind, shape, 10, role=role)
    assert students.eval_batch(spec, CPU) == cpu
    assert students.eval_batch(spec, torch.device("cuda")) == cuda


@pytest.mark.parametrize("kind,shape", [("vector", (216,)), ("sequence", (6, 128)), ("image", (3, 32, 32))])
def test_inference_from_16_rows_on_does_not_depend_on_the_batch(kind, shape):
    """Why a device-sized inference batch (never under 16 rows) cannot move a figure: every default network's
    outputs are the same bits in batches of 16, 48, 64 or 320 rows; batches of 1-15 rows take other kernels."""
    torch.manual_seed(0)
    net = students.train_layout(students.build(students.default_spec(kind, shape, 10, role="teacher"))).eval()
    x = torch.randn(320, *shape)
    whole = engine.predict_logits(net, x, batch=1024)
    for b in (16, 48, 64, 77, 316, students.eval_batch(net.spec, CPU)):  # 77, 316: remainders of 12 and 4 rows
        assert torch.equal(whole, engine.predict_logits(net, x, batch=b)), b


def test_row_batches_fold_a_small_remainder_into_the_batch_before():
    assert engine.row_batches(320, 64) == [slice(0, 64), slice(64, 128), slice(128, 192), slice(192, 256), slice(256, 320)]
    assert engine.row_batches(320, 77) == [slice(0, 77), slice(77, 154), slice(154, 231), slice(231, 320)]  # 12 rows left
    assert engine.row_batches(2000, 1024) == [slice(0, 1024), slice(1024, 2000)]
    assert engine.row_batches(10, 1024) == [slice(0, 10)]  # fewer rows than the floor: one batch
    assert engine.row_batches(0, 64) == []


def test_activations_measured_without_moving_the_random_state():
    spec = students.default_spec("image", (3, 64, 64), 10, role="teacher")
    state = torch.random.get_rng_state()
    students.activations.cache_clear()
    act = students.activations(spec)
    assert torch.equal(state, torch.random.get_rng_state())
    assert act.largest == 128 * 32 * 32  # the first block's expansion at 32x32 (stem stride 2)
    assert 6 << 20 < 4 * act.total < 7 << 20  # 6.5 MB a row, as BENCHMARKS.md measured


def test_config_preload_and_memory_guard_validated_and_not_part_of_the_training_key():
    with pytest.raises(UserError, match="preload 'yes'"):
        DistillConfig(data="builtin:mfeat", source="fac", target="zer", preload="yes")
    with pytest.raises(UserError, match="max_batch_bytes must be >= 1"):
        DistillConfig(data="builtin:mfeat", source="fac", target="zer", max_batch_bytes=0)
    a = DistillConfig(data="builtin:mfeat", source="fac", target="zer", preload="never", max_batch_bytes=1 << 30)
    assert a.training_key() == DistillConfig(data="builtin:mfeat", source="fac", target="zer").training_key()


def test_distill_streamed_is_bit_identical_to_preloaded(tmp_path):
    """Teacher (source) and student (image target) both read batch by batch: the same weights, byte for byte."""
    synthetic_paired(tmp_path / "ds", "image", n=300)
    states = {}
    for mode in ("always", "never"):
        cfg = DistillConfig(data=str(tmp_path / "ds"), source="src", target="tgt", teacher_epochs=3, epochs=3,
                            finetune_epochs=2, device="cpu", preload=mode)
        got: dict = {}
        res = run_distill(cfg, tmp_path / mode, capture=got)
        states[mode] = (got["student"].state_dict(), res.metrics["test_accuracy"],
                        (tmp_path / mode / "teacher_outputs.safetensors").read_bytes())
    a, b = states["always"], states["never"]
    assert a[1] == b[1] and a[2] == b[2]
    assert all(torch.equal(v, b[0][k]) for k, v in a[0].items())


def test_batch_memory_check_measures_the_network_and_scales_with_the_machine(monkeypatch):
    spec = students.default_spec("image", (3, 64, 64), 10)  # a camera-sized student: 3.0 MB a row
    engine.check_batch_memory(spec, 192, None, CPU, "--batch-size 128", "lower --batch-size")  # was refused at 3.4 GiB
    with pytest.raises(UserError, match=r"^--batch-size 128: about 0\.8 GiB of activations per step \(4\.4 MB a row\), "
                                        r"over the 0\.5 GiB limit \(max_batch_bytes\); lower --batch-size"):
        engine.check_batch_memory(spec, 192, 1 << 29, CPU, "--batch-size 128", "lower --batch-size")
    monkeypatch.setattr(engine, "available_bytes", lambda device: 1 << 30)
    with pytest.raises(UserError, match=r"half the memory available on cpu"):
        engine.check_batch_memory(spec, 192, None, CPU, "--batch-size 128", "lower --batch-size")
