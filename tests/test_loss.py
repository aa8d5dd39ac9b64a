"""The GPO loss pinned against docs/GPO.md: every listed property, hand values and finite differences."""

import math

import pytest
import torch
import torch.nn.functional as F

from gpo.loss import ARMS, group_advantages, gpo_loss, has_spread, member_delta



@pytest.fixture(autouse=True)
def float64():
    """Exact arithmetic for these checks, restored afterwards (other tests build float32 models)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_advantages_hand_computed():
    r = torch.tensor([[0.0, 0.5, 1.0, 0.5]])  # mean 0.5, population std sqrt(0.125)
    a = group_advantages(r)
    s = math.sqrt(0.125) + 1e-4
    assert torch.allclose(a, torch.tensor([[-0.5 / s, 0.0, 0.5 / s, 0.0]]))
    assert torch.allclose(group_advantages(torch.tensor([[0.0] * 9 + [1.0]])).max(), torch.tensor(3.0), atol=1e-3)
    assert group_advantages(torch.tensor([[0.0] * 99 + [1.0]])).max() == 5.0  # clipped
    assert torch.equal(has_spread(torch.tensor([[1.0, 1.0], [0.0, 1.0]])), torch.tensor([False, True]))


def test_member_delta():
    y = torch.zeros(2, 3, 4, 4)
    pred, ref = torch.full_like(y, 1.0), torch.full_like(y, 2.0)
    assert torch.allclose(member_delta(pred, ref, y), torch.tensor([1.0 - 4.0, 1.0 - 4.0]))


def dpo_pair_loss(delta_w, delta_l, beta):
    """Diffusion-DPO (Wallace et al.) as in the diffusers script: −log σ(−(β/2)((Δ_w) − (Δ_l)))."""
    return -F.logsigmoid(-0.5 * beta * (delta_w - delta_l))


@pytest.mark.parametrize("dw,dl", [(0.01, -0.02), (-0.3, 0.2), (0.0, 0.0)])
def test_g2_equals_diffusion_dpo_times_a_constant(dw, dl):
    beta = 1000.0
    delta = torch.tensor([[dl, dw]])
    rewards = torch.tensor([[0.2, 0.9]])  # member 1 wins
    out = gpo_loss(delta, rewards, beta).loss
    const = 2 * 0.35 / (0.35 + 1e-4)  # A_w − A_l with population std 0.35
    assert out.item() == pytest.approx(const * dpo_pair_loss(torch.tensor(dw), torch.tensor(dl), beta).item(), rel=1e-9)
    assert gpo_loss(delta, rewards, beta, arm="dpo").loss.item() == pytest.approx(
        dpo_pair_loss(torch.tensor(dw), torch.tensor(dl), beta).item(), rel=1e-12)


def test_gradient_at_reference_is_advantage_weighted():
    G, beta = 6, 500.0
    rewards = torch.tensor([[0.1, 0.4, 0.4, 0.9, 0.0, 0.6]])
    delta = torch.zeros(1, G, requires_grad=True)
    out = gpo_loss(delta, rewards, beta)
    out.loss.backward()
    adv = group_advantages(rewards)
    n_pairs = int(((adv[0][:, None] - adv[0][None, :]) > 0).sum())
    expected = (G / (2 * n_pairs)) * (beta / 2) * adv  # GPO.md: (G/(2|P|))·(β/2)·A_i
    assert torch.allclose(delta.grad, expected, atol=1e-9)
    # a member at the group mean gets zero net gradient
    rewards = torch.tensor([[0.0, 0.5, 1.0]])
    delta = torch.zeros(1, 3, requires_grad=True)
    gpo_loss(delta, rewards, beta).loss.backward()
    assert abs(delta.grad[0, 1].item()) < 1e-12 and delta.grad[0, 2] > 0 > delta.grad[0, 0]


@pytest.mark.parametrize("arm", ARMS)
def test_equal_rewards_give_zero_loss_and_zero_gradient(arm):
    delta = torch.randn(3, 5, requires_grad=True)
    out = gpo_loss(delta, torch.full((3, 5), 0.7), 1000.0, arm=arm)
    out.loss.backward()
    assert out.loss.item() == 0.0 and torch.count_nonzero(delta.grad) == 0


def test_near_tie_gets_near_zero_weight_large_gap_large_weight():
    beta = 100.0
    near = torch.tensor([[0.50, 0.5001, 0.0, 1.0]])  # members 0 and 1 nearly tie; 2 and 3 are far apart
    tie_dir = torch.tensor([[1.0, -1.0, 0.0, 0.0]])  # push the policy towards member 1 over member 0
    gap_dir = torch.tensor([[0.0, 0.0, 1.0, -1.0]])  # push it towards member 3 over member 2

    def ratio(arm):
        delta = torch.zeros(1, 4, requires_grad=True)
        gpo_loss(delta, near, beta, arm=arm).loss.backward()
        return ((delta.grad * tie_dir).sum() / (delta.grad * gap_dir).sum()).abs().item()

    assert ratio("gpo") < 1e-3  # the near tie carries ≈ no weight, the large gap a large one
    assert ratio("group-unweighted") > 0.2  # without weights the near tie pulls a third as hard


def test_sign_gradient_lowers_winner_error_raises_loser_error():
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.25]])
    delta = torch.zeros(1, 4, requires_grad=True)
    for arm in ("gpo", "dpo", "group-unweighted", "dgpo"):
        delta.grad = None
        gpo_loss(delta, rewards, 100.0, arm=arm).loss.backward()
        # gradient descent moves Δ against the gradient: the winner's Δ goes down, the loser's up
        assert delta.grad[0, 0] > 0 > delta.grad[0, 1], arm


def test_loss_falls_when_policy_prefers_winners():
    rewards = torch.tensor([[1.0, 0.0, 0.5]])
    good = gpo_loss(torch.tensor([[-0.01, 0.01, 0.0]]), rewards, 1000.0)
    bad = gpo_loss(torch.tensor([[0.01, -0.01, 0.0]]), rewards, 1000.0)
    assert good.loss < bad.loss and good.implicit_accuracy == 1.0 and bad.implicit_accuracy == 0.0
    assert good.reward_margin > 0 > bad.reward_margin


@pytest.mark.parametrize("arm", ["gpo", "group-unweighted", "dgpo", "dpo"])
def test_finite_difference_gradient(arm):
    torch.manual_seed(0)
    delta = (torch.randn(3, 4) * 0.01).requires_grad_(True)
    rewards = torch.rand(3, 4)
    f = lambda d: gpo_loss(d, rewards, 50.0, arm=arm).loss
    f(delta).backward()
    num = torch.zeros_like(delta)
    h = 1e-6
    for idx in range(delta.numel()):
        e = torch.zeros(delta.numel())
        e[idx] = h
        e = e.view_as(delta)
        num.view(-1)[idx] = (f(delta.detach() + e) - f(delta.detach() - e)) / (2 * h)
    assert torch.allclose(delta.grad, num, atol=1e-6, rtol=1e-5)


def test_dpo_random_picks_a_real_pair_and_is_seeded():
    rewards = torch.tensor([[0.3, 0.1, 0.9, 0.9]])
    delta = torch.zeros(1, 4, requires_grad=True)
    out = gpo_loss(delta, rewards, 10.0, arm="dpo-random", generator=torch.Generator().manual_seed(1))
    out.loss.backward()
    nz = delta.grad.nonzero()[:, 1].tolist()
    assert len(nz) == 2 and rewards[0, nz].unique().numel() == 2  # a pair with different rewards
    assert out.pairs == 1


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="groups, members"):
        gpo_loss(torch.zeros(4), torch.zeros(4), 1.0)
    with pytest.raises(ValueError, match="unknown loss arm"):
        gpo_loss(torch.zeros(1, 2), torch.tensor([[0.0, 1.0]]), 1.0, arm="ppo")


def test_anchor_zero_is_the_plain_loss_and_equal_rewards_stay_silent():
    delta = torch.randn(3, 5)
    rewards = torch.rand(3, 5)
    for arm in ARMS:
        for kind in ("dpop", "sft"):
            a = gpo_loss(delta, rewards, 700.0, arm=arm, generator=torch.Generator().manual_seed(0)).loss
            b = gpo_loss(delta, rewards, 700.0, arm=arm, generator=torch.Generator().manual_seed(0),
                         anchor=0.0, anchor_kind=kind).loss
            assert a.item() == b.item()
            d = delta.clone().requires_grad_(True)
            out = gpo_loss(d, torch.full((3, 5), 0.3), 700.0, arm=arm, anchor=2.0, anchor_kind=kind)
            out.loss.backward()
            assert out.loss.item() == 0.0 and torch.count_nonzero(d.grad) == 0


def test_anchor_gradient_hand_computed():
    """sft: ∂/∂Δ_i of anchor·(β/2)·Σ A_i⁺ Δ_i / G is anchor·(β/2)·A_i⁺/G — winners only, losers untouched.
    dpop: the same, but only for winners with Δ_i > 0 (explained worse than by the reference)."""
    beta, lam = 400.0, 0.5
    rewards = torch.tensor([[1.0, 0.0, 0.5, 0.25]])
    adv = group_advantages(rewards)
    delta = torch.tensor([[0.002, 0.001, -0.003, 0.004]])
    plain = delta.clone().requires_grad_(True)
    gpo_loss(plain, rewards, beta).loss.backward()
    for kind, mask in (("sft", torch.ones(4)), ("dpop", (delta[0] > 0).double())):
        d = delta.clone().requires_grad_(True)
        out = gpo_loss(d, rewards, beta, anchor=lam, anchor_kind=kind)
        out.loss.backward()
        extra = lam * (beta / 2) * adv.clamp(min=0)[0] * mask / 4
        assert torch.allclose(d.grad[0] - plain.grad[0], extra, atol=1e-12)
        value = lam * (beta / 2) * (adv.clamp(min=0)[0] * mask * delta[0]).sum() / 4
        assert out.loss.item() == pytest.approx(gpo_loss(delta, rewards, beta).loss.item() + value.item(), rel=1e-12)
    # the winner (member 0, Δ > 0) is pulled back under dpop; member 2 (above average, Δ < 0) is not
    d = delta.clone().requires_grad_(True)
    gpo_loss(d, rewards, beta, anchor=lam, anchor_kind="dpop").loss.backward()
    assert d.grad[0, 0] > plain.grad[0, 0] and d.grad[0, 2] == plain.grad[0, 2]
