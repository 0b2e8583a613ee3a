"""LR schedules of each recipe at chosen steps, and their torch.optim.lr_scheduler plumbing."""

import io
import math

import pytest
import torch

from aacn.train.recipes import RECIPES, build_optimizer, schedule_for


def test_paper_sgd_warms_up_then_cosine():
    f = schedule_for("paper-sgd", epochs=100, steps_per_epoch=10)  # warm-up: 5 epochs = 50 steps
    assert f(0) == 0.0
    assert f(25) == pytest.approx(0.5)
    assert f(50) == pytest.approx(1.0)
    assert f(50 + 475) == pytest.approx(0.5)  # half-way through the cosine
    assert f(1000) == pytest.approx(0.0, abs=1e-12)


def test_seed_adam_milestones_of_the_replication():
    f = schedule_for("seed-adam", epochs=220, steps_per_epoch=3)
    expected = {0: 1.0, 79: 1.0, 80: 0.1, 119: 0.1, 120: 0.01, 160: 0.001, 180: 0.0005, 219: 0.0005}
    for epoch, factor in expected.items():
        assert f(epoch * 3) == pytest.approx(factor), epoch
        assert f(epoch * 3 + 2) == pytest.approx(factor), epoch


def test_wrn_sgd_steps_at_30_60_80_percent():
    f = schedule_for("wrn-sgd", epochs=10, steps_per_epoch=7)
    assert [f(e * 7) for e in range(10)] == pytest.approx([1, 1, 1, 0.2, 0.2, 0.2, 0.04, 0.04, 0.008, 0.008])


def test_fast_recipe_warms_up_and_ends_at_zero():
    f = schedule_for("fast", epochs=10, steps_per_epoch=10)
    assert f(0) == 0 and f(20) == pytest.approx(1.0) and f(100) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_scheduler_steps_match_the_pure_schedule_and_survive_a_checkpoint(recipe):
    model = torch.nn.Linear(3, 2)
    opt, sched, hyper = build_optimizer(recipe, model, epochs=4, steps_per_epoch=5, batch_size=512)
    base = hyper["base_lr"]
    f = schedule_for(recipe, epochs=4, steps_per_epoch=5)
    for step in range(12):
        assert opt.param_groups[0]["lr"] == pytest.approx(base * f(step))
        opt.step()
        sched.step()
    buffer = io.BytesIO()
    torch.save({"s": sched.state_dict(), "o": opt.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    opt2, sched2, _ = build_optimizer(recipe, model, epochs=4, steps_per_epoch=5, batch_size=512)
    opt2.load_state_dict(state["o"])
    sched2.load_state_dict(state["s"])
    for step in range(12, 20):
        assert opt2.param_groups[0]["lr"] == pytest.approx(base * f(step))
        opt2.step()
        sched2.step()


def test_base_lr_rules_and_overrides():
    model = torch.nn.Linear(3, 2)
    assert build_optimizer("paper-sgd", model, epochs=1, steps_per_epoch=1, batch_size=512)[2]["base_lr"] == 0.4
    _, _, h = build_optimizer("wrn-sgd", model, epochs=1, steps_per_epoch=1, batch_size=512, lr=0.05,
                              weight_decay=0.0)
    assert h["base_lr"] == 0.05 and h["weight_decay"] == 0.0 and h["optimizer"] == "sgd-nesterov"
    assert math.isclose(RECIPES["seed-adam"].lr(128), 1e-3)
    with pytest.raises(ValueError, match="unknown recipe"):
        build_optimizer("nope", model, epochs=1, steps_per_epoch=1, batch_size=1)
