import runpy

import pytest
import torch
import torch.nn.functional as F

from nanor1.model import GPT, MLA, Gate, KVCache, ModelConfig, MoE, apply_rope, num_params, rope_tables

ROOT = __file__.rsplit("/tests/", 1)[0]


def size(name, **overrides):
    return ModelConfig(**{**runpy.run_path(f"{ROOT}/configs/model_{name}.py")["model"], **overrides})


def tiny(**overrides):
    torch.manual_seed(0)
    return GPT(size("test", attn_impl="torch", loss_impl="torch", **overrides)).eval()


def test_causal_no_future_leak():
    model = tiny()
    idx = torch.randint(0, 512, (2, 24))
    changed = idx.clone()
    changed[:, 15:] = torch.randint(0, 512, (2, 9))
    a, b = model(idx).logits, model(changed).logits
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-6)
    assert not torch.allclose(a[:, 15:], b[:, 15:], atol=1e-3)


@pytest.mark.parametrize("q_lora_rank", [0, 16])
def test_absorbed_decode_path_equals_naive(q_lora_rank):
    model = tiny(q_lora_rank=q_lora_rank)
    idx = torch.randint(0, 512, (3, 20))
    start = torch.tensor([0, 5, 11])  # left padding: rows 1 and 2 begin later
    naive = model(idx, start=start).logits
    cache = KVCache(model.cfg, 3, 32, "cpu", torch.float32, start=start)
    absorbed = model(idx, cache=cache).logits
    real = torch.arange(20)[None, :] >= start[:, None]  # padding positions are undefined either way
    assert (naive - absorbed)[real].abs().max() < 1e-5


def test_incremental_decoding_equals_full_forward():
    model = tiny()
    prompt, continuation = torch.randint(0, 512, (2, 7)), torch.randint(0, 512, (2, 20))
    start = torch.tensor([0, 3])
    full = model(torch.cat([prompt, continuation], 1), start=start).logits  # (2, 27, V)
    cache = KVCache(model.cfg, 2, 27, "cpu", torch.float32, start=start)
    steps = [model(prompt, cache=cache).logits[:, -1]]
    for t in range(19):
        steps.append(model(continuation[:, t:t + 1], cache=cache).logits[:, -1])
    assert cache.length == 26
    assert (torch.stack(steps, 1) - full[:, 6:26]).abs().max() < 1e-5


def test_prefill_then_fan_out_matches_repeated_prompt():
    model = tiny()
    prompt, nxt = torch.randint(0, 512, (2, 6)), torch.randint(0, 512, (6, 1))
    cache = KVCache(model.cfg, 2, 8, "cpu", torch.float32)
    model(prompt, cache=cache)
    fanned = model(nxt, cache=cache.fan_out(3)).logits[:, -1]
    full = model(torch.cat([prompt.repeat_interleave(3, 0), nxt], 1)).logits[:, -1]
    assert (fanned - full).abs().max() < 1e-5


def slow_moe(moe, x):
    """Reference: a Python loop over tokens and their chosen experts."""
    flat = x.reshape(-1, x.size(-1))
    weights, experts, _ = moe.gate(flat)
    out = []
    for t in range(flat.size(0)):
        y = moe.shared(flat[t]) if moe.shared is not None else 0
        for j in range(experts.size(1)):
            e = experts[t, j]
            y = y + weights[t, j] * (moe.w2[e] @ (F.silu(moe.w1[e] @ flat[t]) * (moe.w3[e] @ flat[t])))
        out.append(y)
    return torch.stack(out).view_as(x)


@pytest.mark.parametrize("groups", [(1, 1), (2, 1)])
def test_fast_moe_dispatch_equals_per_token_loop(groups):
    torch.manual_seed(0)
    cfg = size("test", n_routed_experts=8, n_activated_experts=3, n_expert_groups=groups[0],
               n_limited_groups=groups[1] if groups[0] > 1 else 1, route_scale=2.5, seq_aux_alpha=0.0)
    moe = MoE(cfg)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.3)
    moe.gate.bias.copy_(torch.randn(8) * 0.1)
    x = torch.randn(3, 11, cfg.dim, requires_grad=True)
    probe = torch.randn(3, 11, cfg.dim)
    fast, counts, _ = moe(x)
    (fast * probe).sum().backward()
    grads_fast = [t.grad.clone() for t in (x, moe.w1, moe.w2, moe.w3, moe.gate.weight)]
    for t in (x, moe.w1, moe.w2, moe.w3, moe.gate.weight):
        t.grad = None
    slow = slow_moe(moe, x)
    (slow * probe).sum().backward()
    grads_slow = [t.grad for t in (x, moe.w1, moe.w2, moe.w3, moe.gate.weight)]
    assert torch.allclose(fast, slow, atol=1e-5)
    for gf, gs in zip(grads_fast, grads_slow):
        assert torch.allclose(gf, gs, atol=1e-5)
    assert counts.sum() == 33 * 3


def test_bias_update_balances_a_skewed_router():
    torch.manual_seed(0)
    cfg = size("test", n_routed_experts=8, n_activated_experts=2, n_expert_groups=1, n_limited_groups=1,
               bias_update_speed=0.01, seq_aux_alpha=0.0)
    moe = MoE(cfg).train()
    torch.nn.init.normal_(moe.gate.weight, std=0.5)
    x = torch.randn(4, 64, cfg.dim)
    x = x + 1.5 * moe.gate.weight[0] / moe.gate.weight[0].norm()  # every token leans to expert 0
    imbalance = []
    for _ in range(150):
        _, counts, _ = moe(x)  # a training forward (grad enabled) is what counts the load
        imbalance.append((counts.max() / counts.float().mean()).item())
        moe.update_bias()
    assert imbalance[0] > 2.0
    assert max(imbalance[-10:]) < 0.6 * imbalance[0]
    assert abs(moe.gate.bias.mean()) < 1e-6  # centred


def test_every_expert_gets_gradient_and_the_bias_never_does():
    model = tiny()
    model.train()
    idx = torch.randint(0, 512, (8, 32))
    out = model(idx, targets=idx)
    out.loss.backward()
    for moe in model.moe_layers():
        assert moe.gate.bias.grad is None and not moe.gate.bias.requires_grad
        assert "gate.bias" not in dict(moe.named_parameters())
        for w in (moe.w1, moe.w2, moe.w3):  # (E, ., .): every routed expert's slice has gradient
            assert (w.grad.flatten(1).abs().sum(1) > 0).all()
        assert all(p.grad.abs().sum() > 0 for p in moe.shared.parameters())
    assert all(p.grad is not None for p in model.parameters())


def test_mtp_targets_are_shifted_right():
    model = tiny()
    seen_ids, seen_targets = [], []
    model.embed.register_forward_hook(lambda m, inp, out: seen_ids.append(inp[0].tolist()))
    original = model._token_loss
    model._token_loss = lambda h, t: (seen_targets.append(t.tolist()), original(h, t))[1]
    idx = torch.tensor([[10, 11, 12, 13]])
    targets = torch.tensor([[11, 12, 13, 14]])
    model(idx, targets=targets)
    # depth k combines h^{k-1}_i with Emb(t_{i+k}) and predicts t_{i+k+1}
    assert seen_ids == [[[10, 11, 12, 13]], [[11, 12, 13]], [[12, 13]]]
    assert seen_targets == [[[11, 12, 13, 14]], [[12, 13, 14]], [[13, 14]]]


@pytest.mark.parametrize("name", ["test", "laptop", "gpu"])
@pytest.mark.parametrize("variant", [{}, {"q_lora_rank": 24}, {"n_routed_experts": 0}, {"mtp_depth": 0},
                                     {"n_shared_experts": 0, "n_dense_layers": 0}])
def test_parameter_count_matches_closed_form(name, variant):
    cfg = size(name, **variant)
    model = GPT(cfg)
    counts = num_params(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["mtp"] == sum(p.numel() for p in model.mtp.parameters())
    expert = sum(m.w1[0].numel() + m.w2[0].numel() + m.w3[0].numel() for m in model.moe_layers()[:1])
    n_moe_main = sum(isinstance(b.ffn, MoE) for b in model.layers)
    inactive = n_moe_main * (cfg.n_routed_experts - cfg.n_activated_experts) * expert
    assert counts["active"] == counts["total"] - counts["mtp"] - inactive


def test_tiny_model_overfits_one_batch():
    model = tiny(seq_aux_alpha=0.0)
    model.train()
    torch.manual_seed(1)
    idx = torch.randint(0, 512, (4, 33))
    inputs, targets = idx[:, :-1], idx[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = None
    for step in range(150):
        out = model(inputs, targets=targets)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_moe_biases()
        first = first or out.losses["main"].item()
    assert first > 5.0 and out.losses["main"].item() < 0.1


def test_bad_config_and_too_long_input_are_clear_errors():
    with pytest.raises(ValueError, match="n_activated_experts"):
        GPT(size("test", n_activated_experts=9))
    model = tiny()
    with pytest.raises(ValueError, match="exceeds max_seq_len=256"):
        model(torch.zeros(1, 300, dtype=torch.long))


# ----------------------------------------------------------- parts on their own (one MLA layer, one gate)

def rope_by_complex(x, positions, theta):
    """RoPE as complex multiplication (Su et al. 2021, eq. 13): pair (x_i, x_{i+d/2}) as x_i + i x_{i+d/2},
    times e^{i m theta_i}. x (..., T, d), positions (T,)."""
    d = x.size(-1)
    freqs = 1.0 / theta ** (torch.arange(0, d, 2).double() / d)
    z = torch.complex(x[..., :d // 2].double(), x[..., d // 2:].double())
    z = z * torch.polar(torch.ones(len(positions), d // 2, dtype=torch.double), torch.outer(positions.double(), freqs))
    return torch.cat([z.real, z.imag], -1).to(x.dtype)


def test_rope_is_a_rotation_whose_scores_depend_on_the_offset_only():
    cos, sin = rope_tables(64, 8, 10000.0)
    x, positions = torch.randn(5, 8), torch.tensor([0, 1, 7, 30, 63])
    assert torch.allclose(apply_rope(x, cos[positions], sin[positions]), rope_by_complex(x, positions, 10000.0),
                          atol=1e-5)
    q, k = torch.randn(1, 8), torch.randn(1, 8)

    def score(m, n):
        return (apply_rope(q, cos[m], sin[m]) * apply_rope(k, cos[n], sin[n])).sum().item()
    assert abs(score(7, 3) - score(40, 36)) < 1e-4  # same offset, same score
    assert abs(score(7, 3) - score(7, 5)) > 1e-3


def mla_layer(**overrides):
    torch.manual_seed(0)
    cfg = size("test", attn_impl="torch", **overrides)
    return cfg, MLA(cfg).eval()


def attention_by_hand(layer, x):
    """MLA's training path written out per head (DeepSeek-V2 eqs. 37-47), RoPE by complex numbers."""
    cfg, (B, T, _) = layer.cfg, x.shape
    H, dn, dr, dv, C = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    q = layer.wq(x) if cfg.q_lora_rank == 0 else layer.wq_b(layer.q_norm(layer.wq_a(x)))
    q = q.view(B, T, H, dn + dr).transpose(1, 2)  # (B, H, T, dn + dr)
    c_kv, k_r = layer.wkv_a(x).split([C, dr], -1)
    kv = layer.wkv_b(layer.kv_norm(c_kv)).view(B, T, H, dn + dv).transpose(1, 2)
    positions = torch.arange(T)
    q_r = rope_by_complex(q[..., dn:], positions, cfg.rope_theta)
    k_r = rope_by_complex(k_r, positions, cfg.rope_theta)[:, None]  # one rope key per token, all heads
    scores = (q[..., :dn] @ kv[..., :dn].transpose(-1, -2) + q_r @ k_r.transpose(-1, -2)) / (dn + dr) ** 0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ kv[..., dn:]  # (B, H, T, dv)
    return layer.wo(out.transpose(1, 2).reshape(B, T, H * dv))


@pytest.mark.parametrize("q_lora_rank", [0, 16])
def test_mla_training_path_equals_attention_by_hand(q_lora_rank):
    cfg, layer = mla_layer(q_lora_rank=q_lora_rank)
    x = torch.randn(2, 12, cfg.dim)
    cos, sin = rope_tables(12, cfg.qk_rope_head_dim, cfg.rope_theta)
    out = layer(x, cos[None].expand(2, -1, -1), sin[None].expand(2, -1, -1), None)
    assert (out - attention_by_hand(layer, x)).abs().max() < 1e-5


def test_mla_latent_cache_decoding_equals_the_training_path():
    cfg, layer = mla_layer()
    x = torch.randn(2, 10, cfg.dim)
    cos, sin = rope_tables(16, cfg.qk_rope_head_dim, cfg.rope_theta)
    full = layer(x, cos[None, :10].expand(2, -1, -1), sin[None, :10].expand(2, -1, -1), None)
    cache = KVCache(cfg, 2, 16, "cpu", torch.float32)
    outs = []
    for t0, t1 in [(0, 4)] + [(t, t + 1) for t in range(4, 10)]:  # prefill 4 tokens, then one at a time
        slot, positions = cache.advance(t1 - t0)
        outs.append(layer(x[:, t0:t1], cos[positions], sin[positions], None, cache=cache, layer=0, slot=slot))
    assert (torch.cat(outs, 1) - full).abs().max() < 1e-5
    # what is cached per token and layer: the latent (C) and the shared rope key (dr), not H heads' K and V
    assert cache.latent.shape[-1] == cfg.kv_lora_rank and cache.k_rope.shape[-1] == cfg.qk_rope_head_dim
    assert cache.latent[0, :, 10:].abs().sum() == 0 and cache.latent[0, :, :10].abs().sum() > 0


def test_gate_scores_by_sigmoid_selects_with_the_bias_and_limits_groups():
    """V3 eqs. 13-16 by hand: top-2 of 8 experts in 4 groups of 2, one group per token."""
    torch.manual_seed(0)
    cfg = size("test", n_routed_experts=8, n_activated_experts=2, n_expert_groups=4, n_limited_groups=1,
               route_scale=2.0)
    gate = Gate(cfg)
    torch.nn.init.normal_(gate.weight, std=0.5)
    gate.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9]))  # pushes expert 7 into selection
    x = torch.randn(50, cfg.dim)
    weights, experts, scores = gate(x)
    s = torch.sigmoid(x @ gate.weight.t())
    assert torch.allclose(scores, s, atol=1e-6)
    for t in range(50):
        sel = s[t] + gate.bias
        group = int(sel.view(4, 2).sum(-1).argmax())  # a group's score: its top-2 (here: both) biased scores
        assert sorted(experts[t].tolist()) == [2 * group, 2 * group + 1]
        w = s[t, experts[t]]  # the weights use the unbiased scores
        assert torch.allclose(weights[t], w / w.sum() * 2.0, atol=1e-5)
    assert (experts == 7).any(-1).float().mean() > 0.3  # the bias moved the selection
