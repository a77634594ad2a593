"""One command that proves the GPU path: kernel tests in bf16, kernel timings, and 3 full-size GRPO steps.

    python -m nanor1.bench.gpu_check --out docs/bench_gpu_h100.md     # on a CUDA machine, < 8 minutes on an H100
    python -m nanor1.bench.gpu_check --smoke                           # the same code on the CPU, tiny shapes, < 1 min

What it runs, in order (each section is independent: a failure is reported in the table and the next one runs):
  1. the kernel and mixed-precision tests (tests/test_kernels.py, tests/test_mixed_precision.py): on CUDA they
     include bf16 at the GPU block sizes; --smoke runs a fast subset through the interpreter;
  2. attention forward and forward+backward: ours vs every SDPA backend that accepts the shape (flash refuses a v
     dim unlike the qk dim) vs the plain-torch reference, at B=8, H=16, T=2048 with MLA head dims
     qk_nope/rope/v = 128/64/128 (DeepSeek-V2/V3) and 64/32/64 (configs/model_gpu.py);
  3. fused linear cross-entropy vs linear + F.cross_entropy: time and peak memory, 16k tokens (50% ignored, as
     GRPO's prompt and padding rows are), D in {1024, 4096}, V in {32k, 128k}, forward-only and forward+backward;
  4. 3 GRPO steps of configs/countdown.py at full size, from a random initialisation (no cold start needed: the
     point is that the bf16 GPU path runs end to end and how long a step takes), with the MoE path that ran;
  5. the sampler's decode modes (eager, static, compiled) at GRPO's shape on that model: tokens/s and whether
     the tokens are the same as eager's.
Ratios are against the baseline measured in the same run on the same device. The report is markdown.
"""
import argparse
import copy
import dataclasses
import os
import platform
import subprocess
import sys
import time
import traceback

import torch
import torch.nn.functional as F

from nanor1.bench import attention_flops, peak_mib, timer_ms

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fmt(x, spec=".2f"):
    return "n/a" if x is None else format(x, spec)


# ---------------------------------------------------------------------------------------------- 1. tests

def run_tests(lines, smoke):
    tests = [os.path.join(ROOT, "tests", f) for f in ("test_kernels.py", "test_mixed_precision.py")]
    if not all(os.path.exists(t) for t in tests):
        lines.append("tests/ not found next to the package (installed without the repository): skipped")
        return
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    if smoke:  # a few seconds through the interpreter; the GPU run takes them all
        cmd += ["-k", "default_chunking or shape_errors or edge_cases or mixed_dtypes or dtype_switch"]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = [line for line in proc.stdout.strip().splitlines() if line.strip()][-1:]
    lines += [f"`{' '.join(['python -m pytest', *[os.path.relpath(t, ROOT) for t in tests], *cmd[len(tests) + 5:]])}`"
              f": exit {proc.returncode}, {tail[0] if tail else 'no output'} ({time.time() - t0:.0f} s)"]
    if proc.returncode:
        lines += ["", "```", *proc.stdout.strip().splitlines()[-40:], "```"]


# ------------------------------------------------------------------------------------------ 2. attention

def sdpa_backends():
    from torch.nn.attention import SDPBackend
    names = [("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"), ("cudnn", "CUDNN_ATTENTION"),
             ("math", "MATH")]
    return [(name, getattr(SDPBackend, attr)) for name, attr in names if hasattr(SDPBackend, attr)]


def bench_attention(lines, smoke, device, dtype):
    from torch.nn.attention import sdpa_kernel

    from nanor1.kernels import reference
    from nanor1.kernels.attention import flash_mla_attention
    shapes = [(1, 2, 32, 16, 16, 32)] if smoke else [(8, 16, 2048, 128, 64, 128), (8, 16, 2048, 64, 32, 64)]
    reps = 2 if smoke else 10
    for B, H, T, dn, dr, dv in shapes:
        lines += ["", f"### Attention, {str(dtype)[6:]}, causal, B={B} H={H} T={T}, nope/rope/v = {dn}/{dr}/{dv}", "",
                  "| implementation | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s | fwd+bwd vs ours |",
                  "|---|---|---|---|---|---|"]
        g = torch.Generator(device=device).manual_seed(0)
        mk = lambda *s: torch.randn(*s, device=device, dtype=dtype, generator=g).requires_grad_()  # noqa: E731
        qn, qr, kn, kr, v = mk(B, H, T, dn), mk(B, H, T, dr), mk(B, H, T, dn), mk(B, T, dr), mk(B, H, T, dv)
        do = torch.randn(B, H, T, dv, device=device, dtype=dtype, generator=g)
        scale = (dn + dr) ** -0.5
        q = torch.cat([qn, qr], -1).detach().requires_grad_()
        k = torch.cat([kn, kr[:, None].expand(B, H, T, dr)], -1).detach().requires_grad_()
        vv = v.detach().requires_grad_()
        runs = [("ours (Triton)", lambda: flash_mla_attention(qn, qr, kn, kr, v, scale))]
        for name, backend in sdpa_backends():
            def sdpa(backend=backend):
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, vv, is_causal=True, scale=scale)
            runs.append((f"SDPA {name}", sdpa))
        runs.append(("torch reference", lambda: reference.mla_attention(qn, qr, kn, kr, v, scale)))
        results = []
        for name, fn in runs:
            try:
                fwd = timer_ms(lambda: fn(), reps)  # noqa: B023
                fwd_bwd = timer_ms(lambda: fn().backward(do), reps)  # noqa: B023
                results.append((name, fwd, fwd_bwd))
            except (RuntimeError, torch.cuda.OutOfMemoryError) as e:  # a backend that refuses the shape
                results.append((name, None, f"refuses: {str(e).splitlines()[0][:70]}"))
        ours = results[0][2]
        for name, fwd, fwd_bwd in results:
            if fwd is None:
                lines.append(f"| {name} | {fwd_bwd} | | | | |")
                continue
            tf = lambda ms, bwd: attention_flops(B, H, T, dn + dr, dv, bwd) / ms / 1e9  # noqa: E731
            lines.append(f"| {name} | {fwd:.3f} | {tf(fwd, 0):.1f} | {fwd_bwd:.3f} | {tf(fwd_bwd, 1):.1f} | "
                         f"{fwd_bwd / ours:.2f}x |")
        accepted = [(fb, n) for n, f, fb in results[1:-1] if f is not None]
        if accepted:
            best, name = min(accepted)
            lines.append(f"\nFastest SDPA backend that accepts the shape: {name}; ours fwd+bwd takes "
                         f"{ours / best:.2f}x its time.")


# ------------------------------------------------------------------------------------------------ 3. loss

def bench_loss(lines, smoke, device, dtype):
    from nanor1.kernels.cross_entropy import _fp32_out_matmul, fused_linear_cross_entropy
    cases = [(64, 32, 300)] if smoke else [(16384, D, V) for D in (1024, 4096) for V in (32768, 131072)]
    reps = 2 if smoke else 5
    lines += ["", f"### Linear + cross-entropy, {str(dtype)[6:]}, 50% of rows ignored", "",
              "| tokens | D | V | pass | torch ms | ours ms | time ratio | torch peak MiB | ours peak MiB | "
              "memory ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for N, D, V in cases:
        g = torch.Generator(device=device).manual_seed(0)
        h = torch.randn(N, D, device=device, dtype=dtype, generator=g).requires_grad_()
        w = (0.02 * torch.randn(V, D, device=device, dtype=dtype, generator=g)).requires_grad_()
        t = torch.randint(0, V, (N,), device=device, generator=g)
        t[::2] = -100

        def torch_loss():
            return F.cross_entropy((h @ w.t()).float(), t, reduction="none")

        def ours_loss():
            return fused_linear_cross_entropy(h, w, t)

        for mode in ("forward", "fwd+bwd"):
            row = []
            for fn in (torch_loss, ours_loss):
                if mode == "forward":
                    call = lambda fn=fn: torch.no_grad()(fn)()  # noqa: E731  GRPO's pi_old / pi_ref passes
                else:
                    call = lambda fn=fn: fn().sum().backward()  # noqa: E731
                try:
                    row.append((timer_ms(call, reps), peak_mib(call)))
                except torch.cuda.OutOfMemoryError:
                    row.append((None, None))
                h.grad = w.grad = None
            (tm, tp), (om, op) = row
            ratio = lambda a, b: "n/a" if a is None or b is None else f"{a / b:.2f}x"  # noqa: E731
            lines.append(f"| {N} | {D} | {V} | {mode} | {fmt(tm)} | {fmt(om)} | {ratio(om, tm)} | "
                         f"{fmt(tp, '.0f')} | {fmt(op, '.0f')} | {ratio(op, tp)} |")
    lines.append(f"\ndW accumulated by a bf16 GEMM with an fp32 output (addmm out_dtype): "
                 f"{ {True: 'yes', False: 'no (upcast fallback)', None: 'not exercised'}[_fp32_out_matmul['ok']] }")


# ------------------------------------------------------------------------------------------------ 4. GRPO

def grpo_steps(lines, smoke, device, out_dir, n_steps=3):
    sys.path.insert(0, ROOT)
    import train_grpo
    from nanor1 import checkpoint, model as model_lib
    from nanor1.config import config_to_dict, load_config
    from nanor1.model import GPT, make_optimizer, num_params
    from nanor1.tasks import corpus, make_tasks
    from nanor1.tokenizer import train_tokenizer

    config_file = os.path.join(ROOT, "configs", "grpo_test.py" if smoke else "countdown.py")
    # smoke: the test-size arithmetic run, in bf16 autocast on the CPU (the GPU's arithmetic pattern)
    overrides = ["--prompts_per_step=2", "--group_size=4", "--micro_batch=4", "--dtype=bf16"] if smoke else []
    overrides.append("--mask_truncated=false")  # a random model never stops: keep its tokens so the update runs
    cfg = load_config(train_grpo.GRPOConfig, [config_file, f"--out_dir={out_dir}", *overrides]).check()
    tasks = make_tasks(cfg, [cfg.task])
    tok = train_tokenizer(corpus(tasks, n_per_task=300 if smoke else 2000), cfg.sft.vocab_size)
    model_cfg = dataclasses.replace(cfg.sft.model, vocab_size=tok.n_vocab,
                                    max_seq_len=max(cfg.sft.model.max_seq_len, cfg.sft.max_len + 1))
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg, device)
    ref = copy.deepcopy(model).eval().requires_grad_(False) if cfg.beta > 0 else None  # KL's frozen reference
    sizes = num_params(model_cfg)
    lines += ["", f"### GRPO, {os.path.relpath(config_file, ROOT)} {' '.join(overrides)}".rstrip(), "",
              f"Model {sizes['total'] / 1e6:.1f}M parameters ({sizes['active'] / 1e6:.1f}M active), random "
              f"initialisation; {cfg.prompts_per_step} prompts x {cfg.group_size} samples, up to "
              f"{cfg.max_new_tokens} new tokens; dtype {cfg.dtype} on {device.type}.", "",
              "| step | wall s | generated tokens/s | update tokens/s | mean length | ratio min / max | loss |",
              "|---|---|---|---|---|---|---|"]
    model_lib.expert_path_used.update(grouped=0, loop=0)
    task = tasks[0]
    # then 2 more steps with the compiled sampler (the first one compiles it); not in smoke mode (no C++ on CI)
    plan = [("eager", n_steps)] + ([] if smoke else [("compiled", 2)])
    for step, decode in enumerate(d for d, k in plan for _ in range(k)):
        cfg.decode = decode
        t0 = time.time()
        m = train_grpo.grpo_step(cfg, model, ref, optimizer, tok, task, step, device)
        lines.append(f"| {step + 1} ({decode}) | {time.time() - t0:.1f} | {m['gen_tokens_per_s']:.0f} | "
                     f"{m.get('train_tokens_per_s', 0):.0f} | {m['length']:.0f} | "
                     f"{m.get('ratio_min', 1):.4f} / {m.get('ratio_max', 1):.4f} | {m['loss']:.4f} |")
    lines.append(f"\nExpert matmuls by path: {dict(model_lib.expert_path_used)} "
                 "(the grouped path is torch._grouped_mm; on the GPU under bf16 it should be the only one).")
    checkpoint.save(os.path.join(out_dir, "ckpt.pt"), model=model.state_dict(), model_config=config_to_dict(model_cfg),
                    tokenizer=checkpoint.tokenizer_to_dict(tok), step=n_steps, kind="gpu_check")


# ------------------------------------------------------------------------------------------- 5. decoding

def bench_decode(lines, smoke, device):
    """The sampler's decode modes at GRPO's shape, random weights (no stop token: every row runs to the end)."""
    import runpy
    from nanor1.device import autocast
    from nanor1.engine import generate
    from nanor1.model import GPT, ModelConfig

    config_file = os.path.join(ROOT, "configs", "grpo_test.py" if smoke else "countdown.py")
    model_cfg = ModelConfig(**runpy.run_path(config_file)["sft"]["model"])
    prompts, samples, new_tokens = (2, 2, 8) if smoke else (64, 8, 200)
    modes = ("eager", "static") if smoke else ("eager", "static", "compiled")  # smoke: no C++ compile on CI
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device).eval()
    batch = [[1 + (i * 7 + j) % 50 for j in range(24)] for i in range(prompts)]
    lines += [f"{os.path.relpath(config_file, ROOT)}'s model, random weights, {prompts} prompts x {samples} "
              f"samples, {new_tokens} new tokens, T=1, bf16 autocast; the fastest of 2 calls after a warm-up.", "",
              "| decode | tok/s | vs eager | first call s | same tokens as eager |", "|---|---|---|---|---|"]
    base_t = base_tokens = None
    for mode in modes:
        def run():
            with autocast(device, "bf16"):
                return generate(model, batch, new_tokens, n=samples, temperature=1.0, seed=0, decode=mode)
        t0 = time.time()
        first = run()
        first_s = time.time() - t0
        times = []
        for _ in range(2):
            t0 = time.time()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.time() - t0)
        t = min(times)
        n_tokens = sum(map(len, first.tokens))
        base_t, base_tokens = base_t or t, base_tokens or first.tokens
        lines.append(f"| {mode} | {n_tokens / t:,.0f} | {base_t / t:.2f}x | {first_s:.1f} | "
                     f"{first.tokens == base_tokens} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes on any device (the CPU: Triton's interpreter)")
    p.add_argument("--out", default=None, help="write the markdown report here")
    p.add_argument("--work_dir", default="out/gpu_check", help="scratch folder (the GRPO check's checkpoint)")
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        raise SystemExit("error: no CUDA device; run with --smoke to exercise the same code on the CPU")
    if not cuda:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before nanor1.kernels defines its @triton.jit functions
    import triton
    device = torch.device("cuda" if cuda else "cpu")
    # bf16 on the GPU; the interpreter's dot is wrong on bf16 (see tests/conftest.py), so the CPU smoke uses fp32
    dtype = torch.bfloat16 if cuda else torch.float32
    name = torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
    lines = [f"Device: {name}; torch {torch.__version__}; triton {triton.__version__}; "
             f"{'smoke mode' if args.smoke else 'full size'}", ""]
    t_start = time.time()
    sections = [("Kernel tests", lambda: run_tests(lines, args.smoke)),
                ("Attention", lambda: bench_attention(lines, args.smoke, device, dtype)),
                ("Loss", lambda: bench_loss(lines, args.smoke, device, dtype)),
                ("GRPO", lambda: grpo_steps(lines, args.smoke, device, args.work_dir)),
                ("Decoding", lambda: bench_decode(lines, args.smoke, device))]
    failed = []
    for title, section in sections:
        lines += ["", f"## {title}", ""]
        t0 = time.time()
        try:
            section()
        except Exception as e:  # report and go on: one broken part must not hide the others' numbers
            failed.append(title)
            lines += [f"FAILED: {type(e).__name__}: {e}", "", "```", *traceback.format_exc().splitlines()[-15:], "```"]
        lines.append(f"\n({title}: {time.time() - t0:.1f} s)")
        print("\n".join(lines[-3:]), flush=True)
    lines += ["", f"Total {time.time() - t_start:.0f} s; " + (f"FAILED: {', '.join(failed)}" if failed else "all passed")]
    text = "# GPU check\n\n`python -m nanor1.bench.gpu_check" + (" --smoke" if args.smoke else "") + \
        (f" --out {args.out}`" if args.out else "`") + "\n\n" + "\n".join(lines) + "\n"
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
    print(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
