"""Plain-PyTorch definitions of what the Triton kernels compute. The tests hold the kernels to these.

Both compute in fp32 whatever the input dtype, and return the input dtype (attention) or fp32 (loss).
"""
import torch
import torch.nn.functional as F


def mla_attention(q_nope, q_rope, k_nope, k_rope, v, scale, start=None):
    """Causal attention with MLA's split query/key (DeepSeek-V2 eq. 46, before absorption).

    q_nope, k_nope: (B, H, T, dn)   q_rope: (B, H, T, dr)   k_rope: (B, T, dr), one vector per token shared by
    all heads   v: (B, H, T, dv)   start: (B,) int, first real position of each left-padded row, or None.
    score[t, s] = scale * (q_nope[t] . k_nope[s] + q_rope[t] . k_rope[s]), kept where start <= s <= t.
    A query row with no key left (t < start, a padding position) outputs zeros.  -> (B, H, T, dv)
    """
    B, H, T, _ = q_nope.shape
    scores = q_nope.float() @ k_nope.float().transpose(-1, -2)  # (B, H, T, T)
    scores = scores + q_rope.float() @ k_rope.float().unsqueeze(1).transpose(-1, -2)
    scores = scores * scale
    pos = torch.arange(T, device=q_nope.device)
    keep = (pos[None, :] <= pos[:, None]).expand(B, T, T)  # causal, (B, T, T)
    if start is not None:
        keep = keep & (pos[None, None, :] >= start.view(B, 1, 1))
    scores = scores.masked_fill(~keep[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all-masked rows: NaN -> 0
    return (probs @ v.float()).to(v.dtype)


def linear_cross_entropy(hidden, weight, targets, ignore_index=-100):
    """Per-token cross-entropy of the logits hidden @ weight.T, materialising them.

    hidden: (N, D)   weight: (V, D)   targets: (N,) int, ignore_index where no loss.
    -> loss (N,) fp32, 0 at ignored rows. The target's log-prob is -loss (GRPO uses it).
    """
    logits = hidden.float() @ weight.float().t()  # (N, V)
    return F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="none")
