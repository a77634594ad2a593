import pytest
import torch

from nanor1.grpo import group_advantages, kl_estimate, masked_normalise, policy_loss


def test_advantages_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.1, 0.1, 0.1, 0.1], [1.0, 0.1, 0.0, 0.1]])
    std_adv = group_advantages(r, eps=0.0)[0]
    # mean 0.5, sample std sqrt(1/3) -> +-0.5 / 0.57735 = +-0.866025
    assert torch.allclose(std_adv, torch.tensor([0.866025, -0.866025, -0.866025, 0.866025]), atol=1e-5)
    assert torch.equal(group_advantages(r)[1], torch.zeros(4))  # all-equal group: zero advantage
    dr = group_advantages(r, scale_by_std=False)[2]
    assert torch.allclose(dr, torch.tensor([0.7, -0.2, -0.3, -0.2]), atol=1e-6)


def test_each_normalisation_by_hand():
    per_token = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    assert masked_normalise(per_token, mask, "sequence").item() == pytest.approx((2.0 + 4.0) / 2)
    assert masked_normalise(per_token, mask, "token").item() == pytest.approx(10.0 / 4)
    assert masked_normalise(per_token, mask, "constant", max_len=5).item() == pytest.approx(10.0 / 10)
    with pytest.raises(ValueError, match="loss normalisation"):
        masked_normalise(per_token, mask, "mean")


@pytest.mark.parametrize("norm", ["sequence", "token", "constant"])
def test_gradient_equals_reinforce_when_mu_is_1_and_beta_0(norm):
    torch.manual_seed(0)
    logits = torch.randn(6, 5, 11, requires_grad=True)
    tokens = torch.randint(0, 11, (6, 5))
    mask = (torch.rand(6, 5) > 0.3).long()
    adv = torch.randn(6)

    def logp():
        return torch.log_softmax(logits, -1).gather(2, tokens[..., None])[..., 0]
    lp = logp()
    loss, stats = policy_loss(lp, lp.detach(), adv, mask, eps_low=0.2, eps_high=0.28, norm=norm)
    (g_grpo,) = torch.autograd.grad(loss, logits)
    reinforce = masked_normalise(-adv[:, None] * logp(), mask, norm)  # -A * log pi
    (g_reinforce,) = torch.autograd.grad(reinforce, logits)
    assert torch.allclose(g_grpo, g_reinforce, atol=1e-6)
    assert stats["clip_frac"] == 0.0 and stats["ratio"] == pytest.approx(1.0)


def test_clipping_stops_the_gradient_past_the_trust_region():
    old = torch.zeros(1, 2)
    lp = torch.tensor([[0.5, -0.5]], requires_grad=True)  # ratios e^0.5 = 1.65 and e^-0.5 = 0.61
    loss, stats = policy_loss(lp, old, torch.tensor([1.0]), torch.ones(1, 2), eps_low=0.2, eps_high=0.28)
    (g,) = torch.autograd.grad(loss, lp)
    # A > 0: the token whose ratio rose past 1 + eps_high is clipped (no gradient); the other still pushes up
    assert g[0, 0] == 0 and g[0, 1] < 0 and stats["clip_frac"] == 0.5


@pytest.mark.parametrize("kind,tol", [("k1", 0.01), ("k3", 0.01), ("k2", 0.03)])
def test_kl_estimators_against_exact_kl(kind, tol):
    torch.manual_seed(0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])  # the policy
    q = torch.tensor([0.4, 0.3, 0.2, 0.1])  # the reference
    exact = (p * (p / q).log()).sum()
    samples = torch.multinomial(p, 400_000, replacement=True)
    est = kl_estimate(p.log()[samples], q.log()[samples], kind).mean()
    assert abs(est - exact) < tol, (kind, est.item(), exact.item())
    if kind != "k1":
        assert (kl_estimate(p.log()[samples], q.log()[samples], kind) >= 0).all()  # k2, k3 never negative
    with pytest.raises(ValueError):
        kl_estimate(p, q, "k4")


def test_kl_term_pulls_towards_the_reference():
    lp = torch.tensor([[-0.2, -0.3]], requires_grad=True)
    ref = torch.tensor([[-1.0, -1.0]])
    loss, stats = policy_loss(lp, lp.detach(), torch.zeros(1), torch.ones(1, 2), beta=0.1, ref_logp=ref)
    (g,) = torch.autograd.grad(loss, lp)
    assert (g > 0).all() and stats["kl"] > 0  # lowering log pi towards the reference lowers the loss
