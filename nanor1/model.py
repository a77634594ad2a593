"""A minimal GPT with the DeepSeek-V3 parts, readable top to bottom.

    tokens -> embedding -> n_layers x [ x + MLA(norm(x)) ; x + FFN(norm(x)) ] -> norm -> head
    FFN = dense SwiGLU MLP in the first n_dense_layers, MoE (shared + routed experts) after.
    MTP: mtp_depth extra blocks, each predicting one token further ahead (training signal, and drafts).

Papers: DeepSeek-V2 (arXiv 2405.04434) for MLA, DeepSeek-V3 (arXiv 2412.19437) for the sigmoid gate,
auxiliary-loss-free balancing and MTP. Equation numbers below are those papers'.
Shapes: B batch, T tokens, H heads, D dim, E routed experts, K experts per token, C kv_lora_rank.
"""
import dataclasses
import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from nanor1 import kernels
from nanor1.device import compute_dtype


@dataclasses.dataclass
class ModelConfig:
    vocab_size: int = 4096  # set from the tokenizer by the SFT loop
    dim: int = 256  # residual stream width
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # attention heads
    max_seq_len: int = 1024  # longest sequence (RoPE table, KV cache)
    rope_theta: float = 10000.0  # RoPE base
    norm_eps: float = 1e-6  # RMSNorm epsilon
    # Multi-head Latent Attention
    q_lora_rank: int = 0  # 0: a plain query projection
    kv_lora_rank: int = 64  # MLA latent width C: what the KV cache stores
    qk_nope_head_dim: int = 32  # per-head query/key dims without position
    qk_rope_head_dim: int = 16  # per-head query/key dims with RoPE (the key part shared by heads)
    v_head_dim: int = 32  # per-head value dims
    # feed-forward: dense MLP in the first layers, Mixture-of-Experts after
    n_dense_layers: int = 1  # first layers with a dense MLP instead of MoE
    inter_dim: int = 512  # dense MLP width
    n_routed_experts: int = 8  # routed experts per MoE layer (0: dense model)
    n_shared_experts: int = 1  # always-on experts
    n_activated_experts: int = 2  # routed experts per token (top-K)
    n_expert_groups: int = 1  # expert groups for group-limited routing
    n_limited_groups: int = 1  # groups a token may route to
    moe_inter_dim: int = 128  # each expert's hidden width
    route_scale: float = 1.0  # routing weights are scaled by this
    bias_update_speed: float = 1e-3  # gamma of aux-loss-free balancing (V3 sec. 2.1.2)
    seq_aux_alpha: float = 1e-4  # weight of the sequence-wise balance loss (V3 eq. 17)
    # multi-token prediction
    mtp_depth: int = 1  # multi-token prediction modules (0: none)
    mtp_lambda: float = 0.3  # weight of the MTP loss (V3 eq. 25)
    # which code runs the two hot spots: 'auto' (Triton on CUDA), 'triton', 'torch'
    attn_impl: str = "auto"  # 'auto' (Triton on CUDA, torch elsewhere), 'triton', 'torch'
    loss_impl: str = "auto"  # 'auto' (Triton on CUDA, torch elsewhere), 'triton', 'torch'
    moe_impl: str = "auto"  # 'auto' (grouped matmul for bf16, i.e. under autocast), 'grouped', 'loop'

    def check(self):
        errors = []
        if self.n_routed_experts:  # a model with no routed experts is dense throughout
            if not 1 <= self.n_activated_experts <= self.n_routed_experts:
                errors.append("n_activated_experts must be in 1..n_routed_experts")
            if self.n_expert_groups < 1 or self.n_routed_experts % self.n_expert_groups:
                errors.append("n_routed_experts must be divisible by n_expert_groups")
            elif not 1 <= self.n_limited_groups <= self.n_expert_groups:
                errors.append("n_limited_groups must be in 1..n_expert_groups")
            elif self.n_limited_groups * (self.n_routed_experts // self.n_expert_groups) < self.n_activated_experts:
                errors.append("the kept groups hold fewer experts than n_activated_experts")
        if self.qk_rope_head_dim % 2:
            errors.append("qk_rope_head_dim must be even")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            errors.append("n_dense_layers must be in 0..n_layers")
        for key in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len", "kv_lora_rank", "qk_nope_head_dim",
                    "qk_rope_head_dim", "v_head_dim", "inter_dim", "moe_inter_dim"):
            if getattr(self, key) < 1:
                errors.append(f"{key} must be >= 1")
        for key in ("attn_impl", "loss_impl"):
            if getattr(self, key) not in ("auto", "triton", "torch"):
                errors.append(f"{key} must be 'auto', 'triton' or 'torch'")
        if self.moe_impl not in ("auto", "grouped", "loop"):
            errors.append("moe_impl must be 'auto', 'grouped' or 'loop'")
        if errors:
            raise ValueError("model config: " + "; ".join(errors))
        return self


# ----------------------------------------------------------------------------------------------- basics

class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, computed in fp32 (Zhang & Sennrich 2019)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(max_len, rope_dim, theta):
    """cos, sin of RoPE's angles (Su et al. 2021): (max_len, rope_dim/2) each."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rope_dim, 2).float() / rope_dim)
    angles = torch.outer(torch.arange(max_len).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate pairs (x[i], x[i + d/2]) by the position's angle. x: (..., d); cos/sin broadcast to (..., d/2)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward (Shazeer 2020): w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim, inter_dim):
        super().__init__()
        self.w1 = nn.Linear(dim, inter_dim, bias=False)
        self.w3 = nn.Linear(dim, inter_dim, bias=False)
        self.w2 = nn.Linear(inter_dim, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


# ------------------------------------------------------------------------------------ latent KV cache

class KVCache:
    """What MLA caches per token and layer: the normalised latent c_kv (C values) and the rotated k_rope
    (qk_rope_head_dim values), instead of every head's K and V (DeepSeek-V2 sec. 2.1.2).

    Slots are shared by all rows (`length` of them are used); `valid[b, s]` says whether slot s holds a
    real token of row b, and `pos[b]` is row b's next RoPE position. Ragged prompts are left-padded: their
    padding slots are never valid. Speculative decoding invalidates the slot of a rejected draft.
    Layers 0..n_layers-1 are the main blocks, the rest the MTP blocks (same slots as the main ones).
    """

    def __init__(self, cfg, batch, max_len, device, dtype, start=None, max_position=None):
        n = cfg.n_layers + cfg.mtp_depth
        self.latent = torch.zeros(n, batch, max_len, cfg.kv_lora_rank, device=device, dtype=dtype)
        self.k_rope = torch.zeros(n, batch, max_len, cfg.qk_rope_head_dim, device=device, dtype=dtype)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        start = start if start is not None else torch.zeros(batch, dtype=torch.long, device=device)
        self.pos = -start.to(device=device, dtype=torch.long)  # row b's first real token gets position 0
        self.length = 0
        # Speculative decoding verifies a draft one past the last token it may emit; a position past the RoPE
        # table only ever belongs to such a token, so the sampler clamps it (max_position) instead of failing.
        self.max_position = max_position

    def advance(self, T):
        """Claim the next T slots: -> (first slot, RoPE positions (B, T)). Padding slots stay invalid."""
        t0 = self.length
        if t0 + T > self.valid.size(1):
            raise ValueError(f"KVCache is full: {t0} + {T} tokens > {self.valid.size(1)} slots")
        positions = self.pos[:, None] + torch.arange(T, device=self.pos.device)[None, :]  # (B, T)
        self.valid[:, t0:t0 + T] = positions >= 0
        self.pos += T
        self.length += T
        return t0, positions.clamp(min=0, max=self.max_position)

    def append(self, latents, k_ropes):
        """Store one token per row from the static decode step (GPT.decode_step) in the next slot of the main
        layers. latents (n_layers, B, C), k_ropes (n_layers, B, dr)."""
        t0, positions = self.advance(1)
        self.latent[:latents.size(0), :, t0] = latents
        self.k_rope[:k_ropes.size(0), :, t0] = k_ropes
        return self

    def reject(self, rows, slot):
        """Forget the token in `slot` for the rows where `rows` (B,) is True (a rejected draft)."""
        self.valid[rows, slot] = False
        self.pos -= rows.long()

    def fan_out(self, n):
        """Repeat every row n times (prefill a prompt once, then sample n continuations of it)."""
        self.latent = self.latent.repeat_interleave(n, dim=1)
        self.k_rope = self.k_rope.repeat_interleave(n, dim=1)
        self.valid = self.valid.repeat_interleave(n, dim=0)
        self.pos = self.pos.repeat_interleave(n)
        return self

    def keep(self, rows):
        """Keep only the rows where `rows` (B,) is True (the sampler drops rows that have finished)."""
        self.latent, self.k_rope = self.latent[:, rows], self.k_rope[:, rows]
        self.valid, self.pos = self.valid[rows], self.pos[rows]
        return self

    @staticmethod
    def bytes_per_token(cfg, dtype_bytes=2):
        return cfg.n_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * dtype_bytes


# ---------------------------------------------------------------------------- Multi-head Latent Attention

class MLA(nn.Module):
    """Multi-head Latent Attention (DeepSeek-V2 eqs. 37-47).

    Keys and values come from one low-rank latent c_kv = W_DKV x (eq. 41); the per-head keys/values are
    W_UK c_kv and W_UV c_kv (eqs. 42-43). Position enters only through a decoupled RoPE part: each head's
    query has a rope part, and one rope key per token is shared by all heads (eqs. 44-45).
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        H, dn, dr, dv, C = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        if cfg.q_lora_rank == 0:
            self.wq = nn.Linear(cfg.dim, H * (dn + dr), bias=False)
        else:  # low-rank query (eqs. 37-39)
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.wq_b = nn.Linear(cfg.q_lora_rank, H * (dn + dr), bias=False)
        self.wkv_a = nn.Linear(cfg.dim, C + dr, bias=False)  # W_DKV and W_KR stacked (eqs. 41, 43)
        self.kv_norm = RMSNorm(C, cfg.norm_eps)
        self.wkv_b = nn.Linear(C, H * (dn + dv), bias=False)  # W_UK and W_UV stacked (eqs. 42, 45)
        self.wo = nn.Linear(H * dv, cfg.dim, bias=False)  # eq. 47
        self.scale = (dn + dr) ** -0.5

    def project(self, x, cos, sin):
        """x: (B, T, D) -> q_nope (B, T, H, dn), q_rope (B, T, H, dr), latent (B, T, C), k_rope (B, T, dr): the
        queries (eqs. 37-39, 44), the normalised latent c_kv (eq. 41) and the shared rope key (eq. 43)."""
        cfg, (B, T, _) = self.cfg, x.shape
        H, dn, dr, C = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.kv_lora_rank
        q = self.wq(x) if cfg.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x)))
        q_nope, q_rope = q.view(B, T, H, dn + dr).split([dn, dr], dim=-1)
        q_rope = apply_rope(q_rope, cos[:, :, None], sin[:, :, None])
        latent, k_rope = self.wkv_a(x).split([C, dr], dim=-1)
        return q_nope, q_rope, self.kv_norm(latent), apply_rope(k_rope, cos, sin)

    def forward(self, x, cos, sin, start, cache=None, layer=0, slot=0):
        """x: (B, T, D); cos/sin: (B, T, dr/2) for these tokens' positions; start: (B,) or None (training
        path); cache: a KVCache whose slots slot..slot+T-1 these tokens fill (decoding path)."""
        cfg, (B, T, _) = self.cfg, x.shape
        H, dn, dv = cfg.n_heads, cfg.qk_nope_head_dim, cfg.v_head_dim
        q_nope, q_rope, latent, k_rope = self.project(x, cos, sin)
        if cache is None:
            # Training path: expand the latent into per-head keys and values, one attention call.
            kv = self.wkv_b(latent).view(B, T, H, dn + dv)
            k_nope, v = kv.split([dn, dv], dim=-1)
            out = kernels.mla_attention(q_nope.transpose(1, 2), q_rope.transpose(1, 2), k_nope.transpose(1, 2),
                                        k_rope, v.transpose(1, 2), self.scale, start, impl=cfg.attn_impl)
            out = out.transpose(1, 2)  # (B, T, H, dv)
        else:
            # Decoding path: cache only (latent, k_rope) per token; the T new tokens fill slots t0 .. t0+T-1
            # and attend to the slots before them and to each other, causally.
            t0 = slot
            cache.latent[layer, :, t0:t0 + T] = latent
            cache.k_rope[layer, :, t0:t0 + T] = k_rope
            key_slot, query_slot = torch.arange(t0 + T, device=x.device), torch.arange(t0, t0 + T, device=x.device)
            keep = (key_slot[None, :] <= query_slot[:, None])[None] & cache.valid[:, None, :t0 + T]  # (B, T, S)
            out = self.absorbed_attention(q_nope, q_rope, [(cache.latent[layer, :, :t0 + T],
                                                            cache.k_rope[layer, :, :t0 + T], keep)])
        return self.wo(out.reshape(B, T, H * dv))

    def decode_static(self, x, cos, sin, latents, k_ropes, valid):
        """The static decode step's attention: one new token per row attends to this layer's whole cache
        (latents (B, S, C), k_ropes (B, S, dr), the unwritten slots masked by valid (B, S)) and to itself. The
        cache is only read: the new token's latent and rope key are returned for the sampler to store (a
        compiled step that wrote into its inputs would copy the whole cache every step).
        x: (B, 1, D) -> out (B, 1, D), latent (B, 1, C), k_rope (B, 1, dr)."""
        B, cfg = x.size(0), self.cfg
        q_nope, q_rope, latent, k_rope = self.project(x, cos, sin)
        itself = torch.ones(B, 1, 1, dtype=torch.bool, device=x.device)
        out = self.absorbed_attention(q_nope, q_rope, [(latents, k_ropes, valid[:, None, :]),
                                                       (latent.to(latents.dtype), k_rope.to(k_ropes.dtype), itself)])
        return self.wo(out.reshape(B, 1, cfg.n_heads * cfg.v_head_dim)), latent, k_rope

    def absorbed_attention(self, q_nope, q_rope, parts):
        """Attention over cached latents: absorb W_UK into the query and W_UV into the output, so attention
        runs in the C-dim latent space (V2 sec. 2.1.2): MQA with one shared KV per token.
        q_nope (B, T, H, dn), q_rope (B, T, H, dr); parts: a list of (latents (B, S, C), k_ropes (B, S, dr),
        keep (B, T or 1, S) bool: which of those slots each query sees), one softmax over all of them.
        -> (B, T, H, dv)"""
        cfg = self.cfg
        H, dn, dv, C = cfg.n_heads, cfg.qk_nope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        w = self.wkv_b.weight.view(H, dn + dv, C)
        q_latent = torch.einsum("bthd,hdc->bthc", q_nope, w[:, :dn])  # q^T W_UK
        scores = torch.cat([
            (torch.einsum("bthc,bsc->bhts", q_latent, latents) + torch.einsum("bthr,bsr->bhts", q_rope, k_ropes))
            .float().masked_fill(~keep[:, None], float("-inf")) for latents, k_ropes, keep in parts], -1)
        probs = (scores * self.scale).softmax(-1).nan_to_num(0.0).to(q_nope.dtype)  # (B, H, T, sum of S)
        out_latent, s0 = 0, 0
        for latents, _, _ in parts:
            out_latent = out_latent + torch.einsum("bhts,bsc->bthc", probs[..., s0:s0 + latents.size(1)], latents)
            s0 += latents.size(1)
        return torch.einsum("bthc,hdc->bthd", out_latent, w[:, dn:])  # W_UV applied after attention


# ------------------------------------------------------------------------------------- Mixture of Experts

class Gate(nn.Module):
    """DeepSeek-V3 routing (eqs. 12-16): sigmoid affinities s = sigmoid(u . e_i); the top-K experts by
    s + bias (the bias only SELECTS: aux-loss-free balancing, sec. 2.1.2); weights are the selected s,
    normalised to sum 1, times route_scale. Optional group-limited routing (V2 sec. 2.1.3 / V3)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.dim))
        self.register_buffer("bias", torch.zeros(cfg.n_routed_experts))  # a buffer: never gets a gradient

    def forward(self, x):
        """x: (N, D) -> weights (N, K), experts (N, K) long, scores (N, E) fp32."""
        cfg = self.cfg
        scores = torch.sigmoid(F.linear(x, self.weight).float())  # (N, E)
        select = scores + self.bias
        if cfg.n_expert_groups > 1:
            groups = select.view(x.size(0), cfg.n_expert_groups, -1)  # (N, G, E/G)
            group_score = groups.topk(min(2, groups.size(-1)), dim=-1).values.sum(-1)  # sum of top-2
            kept = group_score.topk(cfg.n_limited_groups, dim=-1).indices
            keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, kept, True)
            select = groups.masked_fill(~keep[:, :, None], float("-inf")).view(x.size(0), -1)
        experts = select.topk(cfg.n_activated_experts, dim=-1).indices
        weights = scores.gather(1, experts)
        weights = weights / weights.sum(-1, keepdim=True) * cfg.route_scale
        return weights.to(x.dtype), experts, scores


_grouped_mm_failed = False
expert_path_used = {"grouped": 0, "loop": 0}  # how many expert matmuls took each path (the tests read it)


def expert_path(x, impl):
    """Which code runs the experts: 'grouped' (torch._grouped_mm, one kernel for all experts, as torchtitan does)
    for bf16 inputs whose rows are 16-byte aligned, or 'loop' (one matmul per expert slice, any dtype)."""
    if impl not in ("auto", "grouped", "loop"):
        raise ValueError(f"model config key 'moe_impl' must be 'auto', 'grouped' or 'loop', got {impl!r}")
    aligned = x.dtype == torch.bfloat16 and x.size(-1) % 8 == 0 and hasattr(torch, "_grouped_mm")
    if impl == "grouped" or (impl == "auto" and aligned and not _grouped_mm_failed):
        return "grouped"
    return "loop"


def expert_matmul(x, w, counts, sizes, impl):
    """Grouped matmul: rows of x are sorted by expert, counts[e] (= sizes[e], a list, or None to read them from
    counts) of them for expert e; row r of expert e becomes x[r] @ w[e].T.
    x: (M, in)   w: (E, out, in), x's dtype -> (M, out)"""
    global _grouped_mm_failed
    counting = not torch.compiler.is_compiling()
    if expert_path(x, impl) == "grouped":
        try:
            offsets = counts.cumsum(0).to(torch.int32)
            out = torch._grouped_mm(x, w.transpose(-2, -1), offs=offsets)
            expert_path_used["grouped"] += counting
            return out
        except (RuntimeError, AttributeError) as e:
            if impl == "grouped":
                raise
            _grouped_mm_failed = True
            warnings.warn(f"torch._grouped_mm unavailable ({str(e)[:80]}); using one matmul per expert")
    if sizes is None:
        sizes = counts.tolist()
    expert_path_used["loop"] += counting
    return torch.cat([xe @ we.t() for xe, we in zip(x.split(sizes), w)])


def count_per_expert(experts, E):
    """experts: (N, K) chosen expert ids -> (E,) how many (token, expert) pairs each expert got. A scatter-add
    rather than torch.bincount, whose output size depends on the data (a compiled step could not hold it)."""
    flat = experts.flatten()
    return torch.zeros(E, dtype=torch.long, device=flat.device).index_add_(0, flat, torch.ones_like(flat))


def routed_dense(x, weights, experts, w1, w3, w2):
    """The routed experts' sum with fixed shapes and no host sync: every expert on every token, weighted by
    its gate (zero for the experts not chosen). E/K times the routed compute of the sorted dispatch, so only
    for the static decode step, where tokens are few.  x (N, D), weights/experts (N, K) -> (N, D)"""
    N, (E, I, D) = x.size(0), w1.shape
    gates = torch.zeros(N, E, dtype=x.dtype, device=x.device).scatter(1, experts, weights)  # (N, E)
    hidden = F.silu(x @ w1.reshape(E * I, D).t()) * (x @ w3.reshape(E * I, D).t())  # (N, E*I)
    hidden = (hidden.view(N, E, I) * gates[:, :, None]).view(N, E * I)
    return hidden @ w2.transpose(1, 2).reshape(E * I, D)  # sum over experts e and hidden units i


def sorted_dispatch(x, weights, experts, counts, w1, w3, w2, impl, out_dtype):
    """The routed experts' weighted sum without a loop over tokens: sort the (token, expert) pairs by expert, run
    each expert's SwiGLU on its contiguous slice (one grouped matmul, or one matmul per expert), scale by the gate
    weight, scatter-add the outputs back to their tokens (the sum over i in V3 eq. 12).
    x (N, D); weights, experts (N, K); counts (E,) pairs per expert; w1, w3 (E, I, D), w2 (E, D, I)
    -> (N, D) in out_dtype"""
    K = experts.size(1)
    order = experts.flatten().argsort(stable=True)  # pair index, sorted by expert
    token = order // K  # the token of each sorted pair
    sizes = counts.tolist() if expert_path(x, impl) == "loop" else None  # (one host sync per layer)
    xs = x[token]  # (N*K, D)
    hidden = F.silu(expert_matmul(xs, w1, counts, sizes, impl)) * expert_matmul(xs, w3, counts, sizes, impl)
    ys = expert_matmul(hidden, w2, counts, sizes, impl) * weights.flatten()[order, None]  # (N*K, D)
    return torch.zeros(x.shape, dtype=out_dtype, device=x.device).index_add_(0, token, ys.to(out_dtype))


class MoE(nn.Module):
    """DeepSeekMoE (V3 eq. 12): h = x + sum_i shared_i(x) + sum_i g_i routed_i(x).

    Dispatch without a loop over tokens (sorted_dispatch): sort the (token, expert) pairs by expert, run each
    expert on its contiguous slice, scatter-add the weighted outputs back to their tokens.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        E, D, I = cfg.n_routed_experts, cfg.dim, cfg.moe_inter_dim
        self.gate = Gate(cfg)
        self.w1 = nn.Parameter(torch.empty(E, I, D))  # routed experts' SwiGLU weights, stacked
        self.w3 = nn.Parameter(torch.empty(E, I, D))
        self.w2 = nn.Parameter(torch.empty(E, D, I))
        self.shared = MLP(D, cfg.n_shared_experts * I) if cfg.n_shared_experts else None
        self.register_buffer("load", torch.zeros(E))  # tokens per expert since the last bias update

    def forward(self, x, real=None, static=False):
        """x: (B, T, D); real: (B, T) bool, the tokens that count for balancing (those with a training target:
        not padding, not the prompt), None = all; static: no host sync and fixed shapes (the captured decode
        step). -> out (B, T, D), real tokens per expert (E,), balance loss."""
        cfg, (B, T, D) = self.cfg, x.shape
        K, E = cfg.n_activated_experts, cfg.n_routed_experts
        flat = x.reshape(B * T, D)
        weights, experts, scores = self.gate(flat)  # (N, K), (N, K), (N, E)
        counts = count_per_expert(experts, E)  # (E,) every token: the dispatch needs them all
        # Under autocast, cast explicitly: autocast does not cover torch._grouped_mm, and all three expert
        # matmuls must see one dtype for the grouped path (the one that runs on the GPU) to be taken.
        dtype = compute_dtype(x.device.type, x.dtype)
        w1, w3, w2 = self.w1.to(dtype), self.w3.to(dtype), self.w2.to(dtype)
        x_c = flat.to(dtype)  # (N, D) in the experts' dtype
        impl = cfg.moe_impl
        if static and expert_path(x_c, impl) == "loop":
            # The loop needs each expert's size on the host: run every expert on every token instead (the
            # grouped matmul needs no sizes, but torch.compile accepts it in bf16 only).
            impl = "dense"
        if impl == "dense":
            out = routed_dense(x_c, weights.to(dtype), experts, w1, w3, w2).to(flat.dtype)
        else:
            out = sorted_dispatch(x_c, weights.to(dtype), experts, counts, w1, w3, w2, impl, flat.dtype)
        if self.shared is not None:
            out = out + self.shared(flat)
        real_counts = counts if real is None else count_per_expert(experts[real.reshape(-1)], E)
        if self.training and torch.is_grad_enabled():  # a training forward (not GRPO's no-grad log-prob passes)
            self.load += real_counts.detach().float()
        aux = x.new_zeros((), dtype=torch.float32)
        if self.training and cfg.seq_aux_alpha > 0:
            # Sequence-wise balance loss (V3 eqs. 17-20): alpha * sum_i f_i P_i per sequence, over its real
            # tokens only, averaged over the sequences that have any.
            m = x.new_ones(B, T, dtype=torch.float32) if real is None else real.float()  # (B, T)
            n_real = m.sum(1)  # (B,)
            chosen = torch.zeros(B, T, E, device=x.device).scatter_(2, experts.view(B, T, K), 1.0)
            f = (chosen * m[:, :, None]).sum(1) * E / (K * n_real.clamp(min=1)[:, None])  # (B, E)
            p = ((scores / scores.sum(-1, keepdim=True)).view(B, T, E) * m[:, :, None]).sum(1) \
                / n_real.clamp(min=1)[:, None]  # (B, E)
            per_seq = (f * p).sum(-1)  # (B,)
            aux = cfg.seq_aux_alpha * (per_seq * (n_real > 0)).sum() / (n_real > 0).sum().clamp(min=1)
        return out.view(B, T, D), real_counts, aux

    @torch.no_grad()
    def update_bias(self):
        """Aux-loss-free balancing (V3 sec. 2.1.2): after a step, bias_i += gamma * sign(mean load - load_i),
        so overloaded experts are picked less and underloaded ones more. Centred (as in torchtitan)."""
        if self.load.sum() == 0:
            return
        self.gate.bias += self.cfg.bias_update_speed * torch.sign(self.load.mean() - self.load)
        self.gate.bias -= self.gate.bias.mean()
        self.load.zero_()


# ----------------------------------------------------------------------------------------------- model

class Block(nn.Module):
    def __init__(self, cfg, use_moe):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLA(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = MoE(cfg) if use_moe else MLP(cfg.dim, cfg.inter_dim)

    def forward(self, x, cos, sin, start, cache, layer, slot=0, real=None):
        """-> x, real tokens per expert (or None for a dense block), balance loss."""
        x = x + self.attn(self.attn_norm(x), cos, sin, start, cache, layer, slot)
        if isinstance(self.ffn, MoE):
            y, load, aux = self.ffn(self.ffn_norm(x), real)
            return x + y, load, aux
        return x + self.ffn(self.ffn_norm(x)), None, 0.0


class MTPModule(nn.Module):
    """Multi-token prediction depth k (V3 eqs. 21-23): h'_i = M_k [RMSNorm(h^{k-1}_i); RMSNorm(Emb(t_{i+k}))],
    then one transformer block. Embedding and output head are the main model's."""

    def __init__(self, cfg):
        super().__init__()
        self.hidden_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.embed_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.proj = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)  # M_k
        self.block = Block(cfg, use_moe=cfg.n_routed_experts > 0 and cfg.n_dense_layers < cfg.n_layers)

    def forward(self, hidden, next_embed, cos, sin, start, cache, layer, slot=0, real=None):
        h = self.proj(torch.cat([self.hidden_norm(hidden), self.embed_norm(next_embed)], dim=-1))
        return self.block(h, cos, sin, start, cache, layer, slot, real)


@dataclasses.dataclass
class ModelOutput:
    logits: torch.Tensor | None  # (B, T, V) when no targets were given (or (B, 1, V) with last_only)
    loss: torch.Tensor | None  # main + mtp + aux, what the optimizer minimises
    losses: dict  # {'main', 'mtp', 'aux'} tensors, for logging
    token_loss: torch.Tensor | None  # (B, T) main-head per-token CE; -token_loss is each target's log-prob
    expert_load: torch.Tensor | None  # (n_moe_layers, E) tokens routed to each expert in this forward
    hidden: torch.Tensor  # (B, T, D) final hidden state before the output norm (h^0 of MTP)
    positions: torch.Tensor  # (B, T) the RoPE positions used


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg.check()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        use_moe = cfg.n_routed_experts > 0
        self.layers = nn.ModuleList(Block(cfg, use_moe and i >= cfg.n_dense_layers) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTPModule(cfg) for _ in range(cfg.mtp_depth))
        cos, sin = rope_tables(cfg.max_seq_len, cfg.qk_rope_head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        for name, p in self.named_parameters():  # residual-branch outputs scaled down (GPT-2)
            if name.endswith(("attn.wo.weight", "ffn.w2.weight", "ffn.w2", "shared.w2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, MoE):
            for p in (module.w1, module.w3, module.w2):
                nn.init.normal_(p, std=0.02)
        elif isinstance(module, Gate):
            nn.init.normal_(module.weight, std=0.02)

    def moe_layers(self):
        return [m for m in self.modules() if isinstance(m, MoE)]

    @torch.no_grad()
    def update_moe_biases(self):
        """Call after every optimizer step (aux-loss-free balancing)."""
        for moe in self.moe_layers():
            moe.update_bias()

    def _rope(self, positions, last=None):
        """last: the largest position when the caller knows it on the host (reading it back is a host sync)."""
        last = int(positions.max()) if last is None else last
        if last >= self.cfg.max_seq_len:
            raise ValueError(f"position {last} exceeds max_seq_len={self.cfg.max_seq_len}")
        return self.rope_cos[positions], self.rope_sin[positions]  # (B, T, dr/2) each

    def forward(self, idx, targets=None, start=None, cache=None, last_only=False, with_mtp=True):
        """idx: (B, T) token ids. targets: (B, T), -100 where no loss (computes the losses, no logits).
        start: (B,) first real position of each left-padded row. cache: a KVCache (absorbed decoding);
        its length is advanced by T. with_mtp=False skips the MTP losses (GRPO needs only the main head)."""
        cfg, (B, T) = self.cfg, idx.shape
        slot = 0
        if cache is not None:
            slot, positions = cache.advance(T)
        else:
            positions = torch.arange(T, device=idx.device)[None, :].expand(B, T)
            if start is not None:
                positions = (positions - start[:, None]).clamp(min=0)
                start = start if bool(start.any()) else None  # no padding: the kernel can skip the mask
        cos, sin = self._rope(positions, last=None if cache is not None else T - 1)
        # The tokens that count for MoE balancing: those with a target, never left padding (None = all).
        real = None
        if targets is not None:
            real = targets != -100
            if start is not None:
                real &= torch.arange(T, device=idx.device)[None, :] >= start[:, None]

        x = self.embed(idx)
        loads, aux = [], x.new_zeros((), dtype=torch.float32)
        for layer, block in enumerate(self.layers):
            x, load, block_aux = block(x, cos, sin, start, cache, layer, slot, real)
            aux = aux + block_aux
            if load is not None:
                loads.append(load)
        hidden = x
        logits = loss = token_loss = None
        losses = {}
        if targets is None:
            logits = self.head(self.norm(x[:, -1:] if last_only else x))
        else:
            token_loss = self._token_loss(x, targets)
            n_valid = (targets != -100).sum().clamp(min=1)
            losses["main"] = token_loss.sum() / n_valid
            # MTP (V3 eqs. 21-25): depth k pairs h^{k-1}_i with Emb(t_{i+k}) and predicts t_{i+k+1}.
            mtp_sum = x.new_zeros((), dtype=torch.float32)
            h = x
            for k, module in enumerate(self.mtp if with_mtp else [], start=1):
                if T - k <= 0:
                    break
                mtp_targets = targets[:, k:]
                if start is not None:  # a left-padding position i predicts nothing, even where t_{i+k+1} is real
                    mtp_targets = mtp_targets.masked_fill(
                        torch.arange(T - k, device=idx.device)[None, :] < start[:, None], -100)
                h, load, block_aux = module(h[:, :T - k], self.embed(idx[:, k:]), cos[:, :T - k], sin[:, :T - k],
                                            start, None, cfg.n_layers + k - 1, real=mtp_targets != -100)
                aux = aux + block_aux
                if load is not None:
                    loads.append(load)
                mtp_loss = self._token_loss(h, mtp_targets)
                mtp_sum = mtp_sum + mtp_loss.sum() / (mtp_targets != -100).sum().clamp(min=1)
            losses["mtp"] = cfg.mtp_lambda / max(cfg.mtp_depth, 1) * mtp_sum
            losses["aux"] = aux
            loss = losses["main"] + losses["mtp"] + losses["aux"]
        expert_load = torch.stack(loads) if loads else None
        return ModelOutput(logits, loss, losses, token_loss, expert_load, hidden, positions)

    def decode_step(self, ids, latents, k_ropes, valid, pos):
        """One decoding step with fixed shapes and no side effects, for torch.compile and CUDA graphs (the
        engine's static sampler): each row's token attends to the whole preallocated cache (latents
        (L, B, S, C), k_ropes (L, B, S, dr) and valid (B, S) of a KVCache, read only) and to itself, at RoPE
        position pos (B,). No host sync, nothing sized by the data (the MoE runs every expert: routed_dense).
        ids (B,) -> logits (B, V), the new token's latents (n_layers, B, C) and rope keys (n_layers, B, dr),
        which KVCache.append stores. Same math as forward(ids[:, None], cache=...)."""
        cos, sin = self.rope_cos[pos[:, None]], self.rope_sin[pos[:, None]]  # (B, 1, dr/2)
        x = self.embed(ids[:, None])
        new_latents, new_k_ropes = [], []
        for layer, block in enumerate(self.layers):
            out, latent, k_rope = block.attn.decode_static(block.attn_norm(x), cos, sin, latents[layer],
                                                           k_ropes[layer], valid)
            x = x + out
            h = block.ffn_norm(x)
            x = x + (block.ffn(h, static=True)[0] if isinstance(block.ffn, MoE) else block.ffn(h))
            new_latents.append(latent[:, 0])
            new_k_ropes.append(k_rope[:, 0])
        return self.head(self.norm(x))[:, 0], torch.stack(new_latents), torch.stack(new_k_ropes)

    def mtp_draft(self, hidden, next_ids, positions, cache, slot):
        """MTP depth 1 at decoding time: from the main hidden states of the tokens in slots slot..slot+T-1
        and the ids that follow them, the logits of the token after those. Its latents go to the MTP layer
        of the same slots. hidden: (B, T, D), next_ids: (B, T), positions: (B, T) -> logits (B, T, V)."""
        cos, sin = self._rope(positions)
        h, _, _ = self.mtp[0](hidden, self.embed(next_ids), cos, sin, None, cache, self.cfg.n_layers, slot)
        return self.head(self.norm(h))

    def _token_loss(self, h, targets):
        """Per-token CE of the shared head on h (B, T', D): the fused kernel's call site. -> (B, T') fp32."""
        B, T, D = h.shape
        loss = kernels.linear_cross_entropy(self.norm(h).reshape(B * T, D), self.head.weight,
                                            targets.reshape(B * T), impl=self.cfg.loss_impl)
        return loss.view(B, T)


def make_optimizer(model, cfg, device):
    """AdamW (Loshchilov & Hutter 2019) with weight decay on matrices only (not norms); cfg gives lr,
    weight_decay, beta1, beta2. The fused CUDA kernel on the GPU."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # norms
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


def num_params(cfg):
    """Closed-form parameter counts -> {'total', 'active', 'mtp'}. 'active' is what one token touches in the
    main model: everything but the routed experts it was not sent to (embedding included, MTP excluded)."""
    D, H = cfg.dim, cfg.n_heads
    dn, dr, dv, C, Q = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank, cfg.q_lora_rank
    q = D * H * (dn + dr) if Q == 0 else D * Q + Q + Q * H * (dn + dr)
    attn = q + D * (C + dr) + C + C * H * (dn + dv) + H * dv * D
    mlp = lambda width: 3 * D * width  # noqa: E731
    expert = mlp(cfg.moe_inter_dim)
    moe_fixed = D * cfg.n_routed_experts + mlp(cfg.n_shared_experts * cfg.moe_inter_dim)
    moe_total = moe_fixed + cfg.n_routed_experts * expert
    moe_active = moe_fixed + cfg.n_activated_experts * expert
    use_moe = cfg.n_routed_experts > 0
    n_moe = cfg.n_layers - cfg.n_dense_layers if use_moe else 0
    n_dense = cfg.n_layers - n_moe
    block = 2 * D + attn
    main_fixed = 2 * cfg.vocab_size * D + D + cfg.n_layers * block + n_dense * mlp(cfg.inter_dim)
    mtp_moe = use_moe and cfg.n_dense_layers < cfg.n_layers
    mtp = cfg.mtp_depth * (2 * D + 2 * D * D + block + (moe_total if mtp_moe else mlp(cfg.inter_dim)))
    return {"total": main_fixed + n_moe * moe_total + mtp, "active": main_fixed + n_moe * moe_active, "mtp": mtp}
