"""fast_cpu_dropout: the cheaper CPU dropout `fit` runs every nn.Dropout with."""
from __future__ import annotations

import pytest
import torch

from components.train.models import DROPOUT_RESOLUTION, fast_cpu_dropout

CPU = torch.device("cpu")


def _net(p: float) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(p))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_it_keeps_one_minus_p_and_scales_the_kept_by_its_inverse(p):
    drop = torch.nn.Dropout(p).train()
    x = torch.ones(2000, 500, requires_grad=True)
    torch.manual_seed(0)
    with fast_cpu_dropout(drop, CPU):
        y = drop(x)
    kept = y != 0
    share = kept.float().mean().item()
    assert abs(share - (1 - p)) < 0.003  # 1M draws: sd 0.0005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    y.sum().backward()  # the gradient goes through the kept elements only, scaled the same
    assert torch.equal(x.grad, y.detach())


def test_the_rate_is_p_rounded_to_its_resolution():
    assert round(0.1 * DROPOUT_RESOLUTION) / DROPOUT_RESOLUTION == pytest.approx(0.1, abs=1e-4)


def test_the_seed_fixes_the_mask_and_different_draws_differ():
    drop = torch.nn.Dropout(0.1).train()
    x = torch.ones(64, 64)
    with fast_cpu_dropout(drop, CPU):
        torch.manual_seed(3)
        a, b = drop(x), drop(x)
        torch.manual_seed(3)
        c = drop(x)
    assert torch.equal(a, c) and not torch.equal(a, b)


def test_eval_mode_and_p_zero_leave_the_input_alone():
    net = _net(0.3).eval()
    x = torch.randn(8, 4)
    with fast_cpu_dropout(net, CPU):
        assert torch.equal(net(x), net[0](x))
    zero = _net(0.0)
    with fast_cpu_dropout(zero, CPU):
        assert "forward" not in vars(zero[1])


def test_it_is_removed_on_exit_and_is_a_no_op_off_the_cpu():
    net = _net(0.1)
    with fast_cpu_dropout(net, CPU):
        assert "forward" in vars(net[1])
    assert "forward" not in vars(net[1])  # saved models and later runs see torch's Dropout
    with fast_cpu_dropout(net, torch.device("cuda")):
        assert "forward" not in vars(net[1])


@pytest.mark.parametrize("on", [False, True])
def test_fit_uses_it_only_when_finetune_fast_cpu_dropout_is_on(on):
    from components.config import FinetuneConfig
    from components.train.loop import fit

    net = _net(0.1)
    seen = []

    def loss_fn(model, batch):
        seen.append("forward" in vars(model[1]))
        return model(batch["x"]).pow(2).mean()

    cfg = FinetuneConfig(device="cpu", dtype="float32", fast_cpu_dropout=on)
    fit(net, cfg, 2, lambda step, micro: {"x": torch.ones(2, 4), "input_ids": torch.ones(2, 4)}, loss_fn)
    assert seen == [on, on] and "forward" not in vars(net[1])
