"""DistillConfig and LossParams: every value a config file can set is checked on creation, in one line naming the
file, the key and the value (was: internal TypeErrors mid-run, or a silent NaN loss for a zero temperature)."""

from __future__ import annotations

import math

import pytest

from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.losses import LossParams
from cmcd_edge.errors import UserError

BASE = {"data": "builtin:mfeat", "source": "fac", "target": "zer"}


@pytest.mark.parametrize("extra,message", [
    ({"lr": "0.01"}, "c.toml: lr must be a number, got '0.01'"),
    ({"teacher_epochs": 2.5}, "c.toml: teacher_epochs must be an integer, got 2.5"),
    ({"patience": True}, "c.toml: patience must be an integer, got True"),
    ({"recipe": 3}, "c.toml: recipe must be a string or null, got 3"),
    ({"max_batch_bytes": "1GB"}, "c.toml: max_batch_bytes must be an integer or null, got '1GB'"),
    ({"loss": {"kd_t": "4"}}, "c.toml: loss: kd_t must be a number, got '4'"),
    ({"loss": {"cmc_learnable_tau": 1}}, "c.toml: loss: cmc_learnable_tau must be true or false, got 1"),
    ({"loss": [1]}, "c.toml: loss must be a table of loss settings, got [1]"),
])
def test_from_json_refuses_a_value_of_the_wrong_type(extra, message):
    with pytest.raises(UserError) as err:
        DistillConfig.from_json({**BASE, **extra}, "c.toml")
    assert str(err.value) == message


@pytest.mark.parametrize("extra,message", [
    ({"lr": math.nan}, "lr must be a finite number > 0, got nan"),
    ({"lr": math.inf}, "lr must be a finite number > 0, got inf"),
    ({"weight_decay": -1e-4}, "weight_decay must be a finite number >= 0, got -0.0001"),
    ({"weight_decay": math.nan}, "weight_decay must be a finite number >= 0, got nan"),
    ({"teacher_lr": 0.0}, "teacher_lr must be a finite number > 0, got 0.0"),
    ({"teacher_weight_decay": -1.0}, "teacher_weight_decay must be a finite number >= 0, got -1.0"),
    ({"teacher_patience": 0}, "teacher_patience must be >= 1, got 0"),
    ({"stem_stride": 3}, r"stem_stride must be 1 or 2 \(or null: by the target's length\), got 3"),
])
def test_distill_config_refuses_nonfinite_and_out_of_range_floats(extra, message):
    with pytest.raises(UserError, match=f"^{message}$"):
        DistillConfig(**BASE, **extra)


@pytest.mark.parametrize("field", ["tau_s", "tau_t", "cmc_tau", "kd_t", "crd_t"])
@pytest.mark.parametrize("value", [0.0, -0.1, math.nan, math.inf])
def test_loss_temperatures_must_be_finite_and_positive(field, value):
    with pytest.raises(UserError, match=f"^loss.{field} must be a finite number > 0 \\(a temperature\\), got {value}$"):
        LossParams(**{field: value})


@pytest.mark.parametrize("kw,message", [
    ({"rkd_distance": -1.0}, "loss.rkd_distance must be a finite number >= 0, got -1.0"),
    ({"rkd_angle": math.nan}, "loss.rkd_angle must be a finite number >= 0, got nan"),
    ({"crd_momentum": 1.5}, "loss.crd_momentum must be in [0, 1], got 1.5"),
    ({"queue_size": -1}, "loss.queue_size must be >= 0, got -1"),
    ({"rkd_angle_rows": 2}, "loss.rkd_angle_rows must be >= 3 (an angle takes three rows), got 2"),
    ({"crd_negatives": 0}, "loss.crd_negatives must be >= 1, got 0"),
    ({"crd_dim": 0}, "loss.crd_dim must be >= 1, got 0"),
])
def test_loss_params_refuse_out_of_range_values(kw, message):
    with pytest.raises(UserError) as err:
        LossParams(**kw)
    assert str(err.value) == message


@pytest.mark.parametrize("seed", [-1, 2**32])
def test_seed_must_fit_32_bits(seed):
    with pytest.raises(UserError, match=f"^--seed {seed}: must be in \\[0, 4294967295\\]$"):
        DistillConfig(**BASE, seed=seed)


def test_select_teacher_checks_its_seed_before_loading_data():
    from cmcd_edge.distill.select import rank_teachers

    with pytest.raises(UserError, match="^--seed -2: must be in"):
        rank_teachers("/nonexistent", "tgt", seed=-2)


def test_defaults_and_a_saved_config_still_load():
    cfg = DistillConfig(**BASE, lr=1, loss=LossParams(kd_t=2))  # an int where a float is asked is fine
    assert DistillConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize("stem_stride,want", [(None, 1), (1, 1), (2, 2)])
def test_student_spec_takes_the_stem_stride_or_the_size_rule(tmp_path, stem_stride, want):
    from tests.helpers import synthetic_paired

    ds = synthetic_paired(tmp_path / "d", "sequence", n=40, target_shape=(3, 16))
    cfg = DistillConfig(data=str(ds.root), source="src", target="tgt", stem_stride=stem_stride)
    assert cfg.student_spec(ds).stem_stride == want


def test_stem_stride_for_a_vector_target_is_refused_in_one_line_before_anything_trains(tmp_path):
    from cmcd_edge.distill.pipeline import run_distill

    with pytest.raises(UserError) as err:
        run_distill(DistillConfig(**BASE, stem_stride=2), tmp_path / "run")
    assert str(err.value) == ("--student auto for --target zer: stem_stride 2: a network of vector samples [47] has "
                              "no stem; leave stem_stride out")
    assert not (tmp_path / "run").exists()


def test_teacher_training_reads_the_teacher_keys():
    cfg = DistillConfig(**BASE, teacher_epochs=7, teacher_batch_size=32, teacher_lr=1e-3, teacher_weight_decay=0.0,
                        teacher_patience=4, teacher_select_window=3)
    t = cfg.teacher_training
    assert (t.epochs, t.batch_size, t.lr, t.weight_decay, t.patience, t.select_window) == (7, 32, 1e-3, 0.0, 4, 3)
    assert DistillConfig(**BASE).teacher_training == type(t)()  # the defaults agree
