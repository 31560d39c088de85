"""The penalty reaches the parameters (create_graph=True), and training with it stops a planted shortcut."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.core.loss import auto_lambda, penalty_batchnorm, rrr_penalty
from trainer.core.models import build_model


def _tiny(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = (
        [nn.Conv2d(1, 4, 3, padding=1)]
        + ([nn.BatchNorm2d(4)] if bn else [])
        + [nn.Softplus(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)]
    )
    return nn.Sequential(*layers)


@pytest.mark.parametrize("model_name", ["tiny", "small-cnn"])
def test_penalty_gradient_wrt_parameters_nonzero_with_mask_zero_without(model_name):
    model = _tiny() if model_name == "tiny" else build_model("small-cnn", 10, 1, 28)
    size = 8 if model_name == "tiny" else 28
    x = torch.rand(4, 1, size, size)
    mask = torch.zeros(4, size, size)
    mask[1, :3, :3] = 1
    params = [p for p in model.parameters() if p.requires_grad]

    with_mask = torch.autograd.grad(rrr_penalty(model, x, mask).sum(), params, allow_unused=True)
    norm = sum(g.abs().sum() for g in with_mask if g is not None)
    assert norm > 0

    without = rrr_penalty(model, x, torch.zeros_like(mask))
    assert torch.all(without == 0)
    zero_grads = torch.autograd.grad(without.sum(), params, allow_unused=True)
    assert all(g is None or torch.all(g == 0) for g in zero_grads)


def test_our_penalty_reaches_every_layer_where_the_papers_reaches_none():
    """The paper's code took the input gradient without create_graph: the same value, but no gradient with
    respect to any parameter. Ours has one in every layer, so an optimizer step moves the weights."""
    model = _tiny()
    params = [p for p in model.parameters() if p.ndim > 1]  # the weights of each layer
    x, mask = torch.rand(2, 1, 8, 8), torch.ones(2, 8, 8)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.log_softmax(model(xg), 1).sum(), xg)  # the paper's variant: no create_graph
    papers = (mask[:, None] * g.square()).flatten(1).sum(1)
    ours = rrr_penalty(model, x, mask)
    torch.testing.assert_close(ours.detach(), papers)  # the same number...
    assert not papers.requires_grad  # ...that the paper could never train
    grads = torch.autograd.grad(ours.sum(), params)
    assert all(gr.abs().sum() > 0 for gr in grads)


def test_penalty_is_per_row_and_matches_finite_differences():
    model = _tiny().double()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    mask = torch.zeros(3, 8, 8, dtype=torch.float64)
    mask[0, 2, 5] = 1.0
    pen = rrr_penalty(model, x, mask)
    assert pen[1] == 0 and pen[2] == 0 and pen[0] > 0

    def f(xx):
        return F.log_softmax(model(xx), 1).sum()

    eps = 1e-6
    dx = torch.zeros_like(x)
    dx[0, 0, 2, 5] = eps
    fd = (f(x + dx) - f(x - dx)) / (2 * eps)
    assert pen[0].item() == pytest.approx(fd.item() ** 2, rel=1e-5)


def test_penalty_validates_shapes():
    with pytest.raises(ValueError, match="masks of shape"):
        rrr_penalty(_tiny(), torch.rand(2, 1, 8, 8), torch.ones(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        rrr_penalty(_tiny(), torch.rand(1, 8, 8), torch.ones(1, 8, 8))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_penalty_batchnorm_uses_batch_statistics_keeps_running_ones_and_restores_mode(mode):
    model = _tiny(bn=True).train(mode == "train")
    bn = model[1]
    before = (bn.running_mean.clone(), bn.running_var.clone(), bn.momentum)
    x = torch.rand(3, 1, 8, 8)
    pen = rrr_penalty(model, x, torch.ones(3, 8, 8))
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert bn.training == (mode == "train") and bn.momentum == before[2]
    with penalty_batchnorm(model):  # the same penalty as a batch-statistics model computes
        assert bn.training and bn.momentum == 0.0
        reference = rrr_penalty(_with_batch_stats(model), x, torch.ones(3, 8, 8))
    torch.testing.assert_close(pen, reference)


def _with_batch_stats(model: nn.Module) -> nn.Module:
    """A copy whose batch norm always normalises by the batch (no running statistics at all)."""
    import copy

    twin = copy.deepcopy(model)
    for m in twin.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    return twin


def test_penalty_batchnorm_falls_back_for_one_value_per_channel():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train()
    pen = rrr_penalty(model, torch.rand(1, 1, 8, 8), torch.ones(1, 8, 8))  # one row: no batch statistics
    assert pen.shape == (1,) and torch.isfinite(pen).all() and model[2].training


def test_auto_lambda_balances_terms():
    assert auto_lambda(torch.tensor(2.0), torch.tensor(0.5)) == pytest.approx(4.0)


def test_training_with_penalty_lowers_saliency_in_planted_region():
    """A planted shortcut: pixel block (0:2, 0:2) carries the label. With the penalty on that block, the
    trained model's input gradient there shrinks by orders of magnitude compared with CE alone."""
    g = torch.Generator().manual_seed(0)
    n = 256
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.1
    x[:, 0, 4:, 4:] += (y[:, None, None].float() + 1) / 4 + 0.3 * torch.rand(n, 4, 4, generator=g)  # real signal
    x[:, 0, :2, :2] = (y[:, None, None].float() + 1) / 3  # the planted shortcut: clean and exact
    mask = torch.zeros(n, 8, 8)
    mask[:, :2, :2] = 1

    def train(lam):
        model = _tiny(seed=1)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(150):
            loss = F.cross_entropy(model(x), y)
            if lam:
                loss = loss + lam * rrr_penalty(model, x, mask).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model

    def share_in_region(model):
        xr = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.log_softmax(model(xr), 1).sum(), xr)
        sal = grad.square()[:, 0]
        return (sal[:, :2, :2].sum() / sal.sum()).item(), rrr_penalty(model, x, mask).mean().item()

    share_ce, pen_ce = share_in_region(train(0.0))
    share_rrr, pen_rrr = share_in_region(train(10.0))
    assert pen_rrr < pen_ce / 20
    assert share_rrr < share_ce / 5
