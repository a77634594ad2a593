"""The math of GRPO and its variants, as plain functions on tensors (the loop is train_grpo.py).

Group Relative Policy Optimization (DeepSeekMath, Shao et al. 2024, arXiv 2402.03300, eq. 3):
    J = E[ 1/G sum_i 1/|o_i| sum_t min(rho_it A_i, clip(rho_it, 1-eps, 1+eps) A_i) - beta KL(pi || pi_ref) ]
    rho_it = pi(o_it | q, o_i,<t) / pi_old(o_it | ...),   A_i = (r_i - mean(r)) / std(r)   (sec. 4.1.2)
Variants, each a switch here:
    DAPO (Yu et al. 2025, arXiv 2503.14476): clip-higher (eps_low 0.2, eps_high 0.28, eq. 10); token-level
        normalisation over the whole batch (eq. 12); dynamic sampling = drop groups whose rewards are all equal.
    Dr. GRPO (Liu et al. 2025, arXiv 2503.20783): advantage r_i - mean(r) without the std; a constant
        normaliser (sequences x max length) instead of each response's length.
KL estimators (Schulman 2020, "Approximating KL divergence"), with log r = log pi_ref - log pi on samples
from pi:  k1 = -log r,  k2 = (log r)^2 / 2,  k3 = (r - 1) - log r  (k3 is GRPO's eq. 4).
"""
import torch

LOSS_NORMS = ("sequence", "token", "constant")


def group_advantages(rewards, scale_by_std=True, eps=1e-4):
    """rewards (B, G), G samples of each of B prompts -> advantages (B, G).
    GRPO: (r - mean) / (std + eps); Dr. GRPO (scale_by_std=False): r - mean."""
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale_by_std:
        return centered
    return centered / (rewards.std(dim=1, keepdim=True) + eps)


def kl_estimate(logp, ref_logp, kind="k3"):
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi. logp, ref_logp: same shape."""
    log_ratio = ref_logp - logp
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        return torch.exp(log_ratio) - 1 - log_ratio
    raise ValueError(f"kl estimator must be 'k1', 'k2' or 'k3', got {kind!r}")


def masked_normalise(per_token, mask, norm, max_len=None):
    """Reduce per-token values (N, T) over the response tokens (mask 1) to one scalar.
    'sequence': mean over each response, then over responses (GRPO eq. 3);
    'token':    sum over all tokens / number of tokens (DAPO eq. 12);
    'constant': sum / (N * max_len) (Dr. GRPO)."""
    mask = mask.to(per_token.dtype)
    if norm == "sequence":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    if norm == "token":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if norm == "constant":
        return (per_token * mask).sum() / (per_token.size(0) * (max_len or per_token.size(1)))
    raise ValueError(f"loss normalisation must be one of {LOSS_NORMS}, got {norm!r}")


def policy_loss(logp, old_logp, advantages, mask, eps_low=0.2, eps_high=0.2, beta=0.0, ref_logp=None,
                kl_kind="k3", norm="sequence", max_len=None):
    """The clipped surrogate (negated, to minimise) plus beta * KL.
    logp, old_logp, ref_logp: (N, T) log-probs of the sampled tokens; advantages: (N,); mask: (N, T).
    -> loss (scalar), stats dict of 0-dim tensors (no grad, on logp's device): clip_frac, kl, ratio (mean),
    ratio_min, ratio_max over the mask (0, 0, 1, 1, 1 when the mask is empty). They stay tensors so that the
    trainer reads them back once per update (each float() of a GPU tensor waits for the GPU: a host sync)."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    kl = None
    if beta > 0:
        kl = kl_estimate(logp, ref_logp, kl_kind)
        per_token = per_token + beta * kl
    loss = masked_normalise(per_token, mask, norm, max_len)
    with torch.no_grad():  # masked sums, not ratio[mask]: boolean indexing also waits for the GPU
        m = mask.bool()
        n = m.sum().clamp(min=1)
        any_token = m.any()  # an empty mask reports ratio 1
        r = ratio.float()
        stats = {"clip_frac": ((clipped < unclipped) & m).sum() / n,  # the min picked the clipped term
                 "ratio": torch.where(any_token, r.masked_fill(~m, 0).sum() / n, 1.0),
                 "ratio_min": torch.where(any_token, r.masked_fill(~m, float("inf")).amin(), 1.0),
                 "ratio_max": torch.where(any_token, r.masked_fill(~m, float("-inf")).amax(), 1.0),
                 "kl": kl.float().masked_fill(~m, 0).sum() / n if kl is not None else r.new_zeros(())}
    return loss, stats
