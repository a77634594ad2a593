"""Benchmark the Triton kernels against PyTorch (a script, not a test). Needs a CUDA GPU.

    python -m nanor1.bench.kernels [--out docs/bench_kernels.md]

Attention: forward and forward+backward TFLOP/s of flash_mla_attention against F.scaled_dot_product_attention
at the same MLA shape (q/k dim nope+rope, v dim different), T = 512..4096, bf16. SDPA has no flash path for a
v dim unlike the k dim, so we report which backend it picks, and also SDPA-flash with V zero-padded to the k dim.
Loss: time and peak memory of fused_linear_cross_entropy against linear + F.cross_entropy (forward+backward),
8k-32k tokens, vocab 8k-32k. Ratios are against the torch baseline measured in the same run.
"""
import argparse

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from nanor1.bench import attention_flops, timer_ms
from nanor1.kernels.attention import flash_mla_attention
from nanor1.kernels.cross_entropy import fused_linear_cross_entropy


def bench_ms(fn, reps=20):
    return timer_ms(fn, reps)


def sdpa_backend_name(q, k, v):
    for name, backend in [("flash", SDPBackend.FLASH_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION),
                          ("cudnn", SDPBackend.CUDNN_ATTENTION), ("math", SDPBackend.MATH)]:
        try:
            with sdpa_kernel(backend):
                F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return name
        except RuntimeError:
            continue
    return "?"


def bench_attention(lines, B=4, H=16, dn=64, dr=32, dv=64):
    lines += [f"### Attention, bf16, B={B}, H={H}, nope/rope/v = {dn}/{dr}/{dv}", "",
              "| T | ours fwd | SDPA fwd (backend) | ours fwd+bwd | SDPA fwd+bwd | SDPA-flash, V padded, fwd+bwd | "
              "ours / best SDPA (fwd+bwd) |", "|---|---|---|---|---|---|---|"]
    dev, dt = "cuda", torch.bfloat16
    for T in (512, 1024, 2048, 4096):
        mk = lambda *s: torch.randn(*s, device=dev, dtype=dt, requires_grad=True)  # noqa: E731
        qn, qr, kn, kr, v = mk(B, H, T, dn), mk(B, H, T, dr), mk(B, H, T, dn), mk(B, T, dr), mk(B, H, T, dv)
        scale = (dn + dr) ** -0.5
        q = torch.cat([qn, qr], -1).detach().requires_grad_()
        k = torch.cat([kn, kr[:, None].expand(B, H, T, dr)], -1).detach().requires_grad_()
        vv = v.detach().requires_grad_()
        v_pad = F.pad(v.detach(), (0, dn + dr - dv)).requires_grad_()
        do, do_pad = torch.randn_like(v), torch.randn(B, H, T, dn + dr, device=dev, dtype=dt)
        ours_f = bench_ms(lambda: flash_mla_attention(qn, qr, kn, kr, v, scale))
        ours_fb = bench_ms(lambda: flash_mla_attention(qn, qr, kn, kr, v, scale).backward(do))
        sdpa = lambda vv_: F.scaled_dot_product_attention(q, k, vv_, is_causal=True, scale=scale)  # noqa: E731
        sdpa_f = bench_ms(lambda: sdpa(vv))
        sdpa_fb = bench_ms(lambda: sdpa(vv).backward(do))
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            pad_fb = bench_ms(lambda: sdpa(v_pad).backward(do_pad))
        tf = lambda ms, bwd: attention_flops(B, H, T, dn + dr, dv, bwd) / ms / 1e9  # noqa: E731
        lines.append(f"| {T} | {tf(ours_f, 0):.0f} | {tf(sdpa_f, 0):.0f} ({sdpa_backend_name(q, k, vv)}) | "
                     f"{tf(ours_fb, 1):.0f} | {tf(sdpa_fb, 1):.0f} | {tf(pad_fb, 1):.0f} | "
                     f"{min(sdpa_fb, pad_fb) / ours_fb:.2f}x |")
        print(lines[-1], flush=True)
    lines.append("TFLOP/s count the useful causal work at the true v dim (the padded run is charged the same).")


def bench_loss(lines, D=1024):
    lines += ["", f"### Linear + cross-entropy, bf16, hidden dim {D}, forward+backward", "",
              "| tokens | vocab | torch ms | ours ms | time ratio | torch peak MiB | ours peak MiB | memory ratio |",
              "|---|---|---|---|---|---|---|---|"]
    for N in (8192, 16384, 32768):
        for V in (8192, 32768):
            h = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            w = (torch.randn(V, D, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
            t = torch.randint(0, V, (N,), device="cuda")
            torch_fn = lambda: F.cross_entropy((h @ w.t()).float(), t, reduction="none").sum().backward()  # noqa
            ours_fn = lambda: fused_linear_cross_entropy(h, w, t).sum().backward()  # noqa: E731
            row = []
            for fn in (torch_fn, ours_fn):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                fn()
                torch.cuda.synchronize()
                peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
                row.append((bench_ms(fn, reps=5), peak))
            (tm, tp), (om, op) = row
            lines.append(f"| {N} | {V} | {tm:.2f} | {om:.2f} | {om / tm:.2f}x | {tp:.0f} | {op:.0f} | {op / tp:.2f}x |")
            print(lines[-1], flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("nanor1.bench.kernels needs a CUDA GPU (the CPU runs kernels only through the interpreter)")
    lines = [f"Device: {torch.cuda.get_device_name()}; torch {torch.__version__}", ""]
    bench_attention(lines)
    bench_loss(lines)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(f"# Kernel benchmark\n\n`python -m nanor1.bench.kernels --out {args.out}`\n\n{text}")


if __name__ == "__main__":
    main()
