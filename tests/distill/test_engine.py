"""engine: model selection on val (BestOnVal: window-averaged accuracy, loss tie-break, patience, resumable),
run_phase's loss scaling under fp16 autocast, and progress off a terminal (phases, and the teacher's pass over rows)."""

from __future__ import annotations

import pytest
import torch

from cmcd_edge.distill.config import DistillConfig
from cmcd_edge.distill.engine import BestOnVal
from cmcd_edge.errors import UserError

# one lucky epoch (index 1) against a later plateau (indices 5-9)
SPIKE_THEN_PLATEAU = [0.5, 0.9, 0.5, 0.5, 0.5, 0.8, 0.8, 0.8, 0.8, 0.8]


def _select(accs, window, losses=None, stop_after=None) -> BestOnVal:
    sel = BestOnVal(window)
    for i, acc in enumerate(accs[:stop_after]):
        sel.add(acc, 1.0 if losses is None else losses[i], {"epoch": torch.tensor(i)})
    sel.finish()
    return sel


def test_bestonval_window_one_is_plain_best_accuracy():
    sel = _select(SPIKE_THEN_PLATEAU, 1)
    assert sel.best_epoch == 1 and int(sel.best_state["epoch"]) == 1 and sel.best_key[0] == pytest.approx(0.9)


def test_bestonval_window_five_prefers_the_plateau_to_a_lone_spike():
    sel = _select(SPIKE_THEN_PLATEAU, 5)
    # spike: mean(.5, .5, .9, .5, .5) = .58; epoch 7: mean(.8 x 5) = .8, the first epoch whose whole window is plateau
    assert sel.best_epoch == 7 and int(sel.best_state["epoch"]) == 7 and sel.best_key[0] == pytest.approx(0.8)


def test_bestonval_pads_the_last_epochs_with_the_last_value():
    sel = _select([0.1, 0.2, 0.3, 0.4, 0.9], 3)  # epoch 4's window is (.4, .9, .9): padded at the end
    assert sel.best_epoch == 4 and sel.best_key[0] == pytest.approx((0.4 + 0.9 + 0.9) / 3)


def test_bestonval_ties_go_to_the_lower_loss_then_the_earlier_epoch():
    assert _select([0.7, 0.7, 0.7], 1, losses=[0.9, 0.5, 0.5]).best_epoch == 1


def test_bestonval_counts_epochs_without_a_new_best_once_scored():
    sel = BestOnVal(5)
    for i, acc in enumerate([0.9, 0.1, 0.1, 0.1, 0.1, 0.1]):
        sel.add(acc, 1.0, {"epoch": torch.tensor(i)})
    # scored so far: epochs 0-3 (epoch 3's window ends at epoch 5); epoch 0 was the best, 1-3 were not
    assert sel.scored == 4 and sel.bad == 3 and len(sel.pending) == 2


def test_bestonval_resumed_from_its_state_dict_selects_as_if_never_stopped():
    whole = _select(SPIKE_THEN_PLATEAU, 5)
    first = BestOnVal(5)
    for i, acc in enumerate(SPIKE_THEN_PLATEAU[:6]):
        first.add(acc, 1.0, {"epoch": torch.tensor(i)})
    again = BestOnVal(5)
    again.load_state_dict(first.state_dict())
    for i, acc in enumerate(SPIKE_THEN_PLATEAU[6:], start=6):
        again.add(acc, 1.0, {"epoch": torch.tensor(i)})
    again.finish()
    assert (again.best_epoch, again.best_key, int(again.best_state["epoch"])) == \
        (whole.best_epoch, whole.best_key, int(whole.best_state["epoch"]))


@pytest.mark.parametrize("key", ["select_window", "teacher_select_window"])
@pytest.mark.parametrize("window", [0, 4])
def test_distill_config_rejects_a_select_window_that_is_not_odd_and_positive(key, window):
    with pytest.raises(UserError, match=f"^{key} must be an odd number >= 1.*got {window}"):
        DistillConfig(data="builtin:mfeat", source="fac", target="zer", **{key: window})


def _tiny_phase(tmp_path, monkeypatch, amp: torch.dtype | None, epochs: int = 2):
    """A phase whose gradients (about 1e-9) underflow to zero in fp16, under autocast in ``amp`` (on the CPU: the
    dtype CUDA picks where bf16 is missing, forced here since this machine has no GPU)."""
    from cmcd_edge.distill import ddp, engine

    monkeypatch.setattr(engine, "amp_dtype", lambda device: amp)
    torch.manual_seed(0)
    net = torch.nn.Linear(8, 4)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))

    def step(gen):
        with engine.autocast(torch.device("cpu")):
            return torch.nn.functional.cross_entropy(net(x), y) * 1e-9, {}

    spec = engine.PhaseSpec("t", epochs, 1e-2, 0.0, 10, 3, 0)
    ckpt = engine.Checkpoint(tmp_path / "checkpoint.pt")
    before = net.weight.detach().clone()
    res = engine.run_phase(spec, net, step, lambda: (0.5, 1.0), ckpt, ddp.Dist())
    assert res.steps == epochs * 3 and res.train_s > 0  # what distill's samples/s divides
    return before, ckpt.load()


def test_run_phase_scales_fp16_losses_so_small_gradients_still_train(tmp_path, monkeypatch):
    before, state = _tiny_phase(tmp_path, monkeypatch, torch.float16)
    last = state["model"]["weight"]
    assert (last - before).abs().min() > 1e-6  # every weight moved: its gradient was not flushed to zero in fp16
    assert state["scaler"]["scale"] > 1.0  # and resume restores the scale


def test_run_phase_needs_no_loss_scaling_without_fp16(tmp_path, monkeypatch):
    before, state = _tiny_phase(tmp_path, monkeypatch, None)
    assert state["scaler"] == {} and (state["model"]["weight"] - before).abs().min() > 1e-6
