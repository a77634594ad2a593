"""Benchmark the model's MoE dispatch and MLA cache (a script, not a test).

    python -m nanor1.bench.model [--out docs/bench_model.md] [--tokens 2048] [--sizes test,laptop,gpu]

Table 1: forward+backward tokens/s of the sorted dispatch (model.MoE) against a masked per-expert loop
(the pattern of DeepSeek-V3's inference/model.py: for each expert, torch.where over the routing table).
Table 2: KV-cache bytes per token: MLA's latent cache vs caching every head's K and V (bf16).
"""
import argparse
import platform
import runpy
import time
import types

import torch
import torch.nn.functional as F

from nanor1.model import GPT, KVCache, ModelConfig, num_params


def masked_moe_forward(self, x):
    """Baseline: loop over experts, find each one's tokens with a mask, run it, add back."""
    B, T, D = x.shape
    flat = x.reshape(B * T, D)
    weights, experts, _ = self.gate(flat)
    out = torch.zeros_like(flat)
    for e in range(self.cfg.n_routed_experts):
        token, slot = torch.where(experts == e)
        if token.numel():
            xe = flat[token]
            ye = (F.silu(xe @ self.w1[e].t()) * (xe @ self.w3[e].t())) @ self.w2[e].t()
            out = out.index_add(0, token, ye * weights[token, slot, None])
    if self.shared is not None:
        out = out + self.shared(flat)
    counts = torch.bincount(experts.flatten(), minlength=self.cfg.n_routed_experts)
    return out.view(B, T, D), counts, x.new_zeros(())


def time_fwd_bwd(model, idx, repeats):
    def step():
        model.zero_grad(set_to_none=True)
        model(idx, targets=idx).loss.backward()
    step()  # warm-up
    if idx.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        step()
    if idx.is_cuda:
        torch.cuda.synchronize()
    return idx.numel() * repeats / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="test,laptop,gpu")
    p.add_argument("--tokens", type=int, default=2048, help="tokens per step (batch x 256)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="also write the tables to this markdown file")
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [f"Device: {name}; torch {torch.__version__}; {args.tokens} tokens/step (seq 256), fp32, "
             f"{args.repeats} timed steps after 1 warm-up.", "",
             "| size | total / active params | sorted dispatch tok/s | masked loop tok/s | ratio |",
             "|---|---|---|---|---|"]
    cache_lines = ["| size | layers | MLA latent cache B/token | per-head K+V cache B/token | ratio |",
                   "|---|---|---|---|---|"]
    for size in args.sizes.split(","):
        cfg = ModelConfig(**runpy.run_path(f"configs/model_{size}.py")["model"])
        torch.manual_seed(0)
        model = GPT(cfg).to(device).train()
        idx = torch.randint(0, cfg.vocab_size, (args.tokens // 256, 256), device=device)
        sorted_tps = time_fwd_bwd(model, idx, args.repeats)
        for moe in model.moe_layers():
            moe.forward = types.MethodType(masked_moe_forward, moe)
        masked_tps = time_fwd_bwd(model, idx, args.repeats)
        n = num_params(cfg)
        lines.append(f"| {size} | {n['total'] / 1e6:.2f}M / {n['active'] / 1e6:.2f}M | {sorted_tps:,.0f} | "
                     f"{masked_tps:,.0f} | {sorted_tps / masked_tps:.2f}x |")
        mla = KVCache.bytes_per_token(cfg)
        naive = cfg.n_layers * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * 2
        cache_lines.append(f"| {size} | {cfg.n_layers} | {mla:,} | {naive:,} | {naive / mla:.1f}x smaller |")
        print(lines[-1], flush=True)
    text = "\n".join(lines + [""] + cache_lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# Model benchmark\n\n`python -m nanor1.bench.model --out {args.out}`\n\n{text}")


if __name__ == "__main__":
    main()
