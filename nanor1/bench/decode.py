"""Decoding benchmark (a script, not a test).

    python -m nanor1.bench.decode --checkpoint out/countdown_laptop/sft --out docs/bench_decode_cpu.md

Table 1: the sampler's decode modes (engine.generate's `decode`) at GRPO's shape: 32 train prompts x 8 samples
of the checkpoint's task, up to 200 new tokens at T=1, stopping at the stop tokens as GRPO does; and one prompt
at batch 1. tokens/s, the ratio to eager measured in the same run, the one-off compile time, and whether the
tokens equal eager's (same seed).
Table 2: the same modes on random weights of the checkpoint's shape, no stop tokens: every row decodes all
200 tokens (the step's own throughput, batch 256 and 1).
Table 3: MLA's latent cache vs recomputing the whole sequence each step (eager, greedy).
Table 4: MTP self-speculative vs plain decoding, greedy, on the checkpoint's task prompts.
Without --checkpoint, tables 1 and 4 are skipped and table 2 uses --size's shape.
"""
import argparse
import dataclasses
import platform
import runpy
import time

import torch

from nanor1 import checkpoint
from nanor1.config import config_from_dict
from nanor1.engine import DECODE_MODES, generate
from nanor1.model import GPT, ModelConfig
from nanor1.tasks import ArithmeticConfig, CountdownConfig, GSM8KConfig, TASKS


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t


def best_of(fn, repeats):
    """-> (output, fastest time) over `repeats` calls."""
    runs = [timed(fn) for _ in range(repeats)]
    return runs[0][0], min(t for _, t in runs)


def compare_modes(model, prompts, n, max_new, stop_ids, pad_id, repeats, modes):
    """-> table rows: one per mode, tokens/s and the ratio to eager (the first mode)."""
    rows, base, base_tokens = [], None, None
    for mode in modes:
        run = lambda: generate(model, prompts, max_new, n=n, temperature=1.0, stop_ids=stop_ids,  # noqa: E731
                               pad_id=pad_id, seed=0, decode=mode)
        _, first = timed(run)  # compiles on the first call ('compiled'); warms caches otherwise
        gen, t = best_of(run, repeats)
        n_tokens = sum(map(len, gen.tokens))
        base = base or t
        base_tokens = base_tokens or gen.tokens
        rows.append(f"| {mode} | {len(prompts) * n} | {n_tokens:,} | {t:.2f} | {n_tokens / t:,.0f} | "
                    f"{base / t:.2f}x | {max(first - t, 0):.1f} | {gen.tokens == base_tokens} |")
        print(rows[-1], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None, help="a trained model: its task's prompts and stop tokens")
    p.add_argument("--size", default="laptop", help="model size for table 2 when no checkpoint is given")
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new_tokens", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2, help="timed calls per cell (the fastest is reported)")
    p.add_argument("--modes", default=",".join(DECODE_MODES), help="decode modes to compare, eager first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    modes = args.modes.split(",")
    name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    trained = tok = ckpt = task = None
    if args.checkpoint:
        trained, tok, ckpt = checkpoint.load_model(args.checkpoint, device)
        shape = trained.cfg
        saved = ckpt["config"]
        task_name = next(t for t, w in saved["tasks"].items() if w > 0)
        task_cls = {"arithmetic": ArithmeticConfig, "countdown": CountdownConfig, "gsm8k": GSM8KConfig}[task_name]
        task = TASKS[task_name](config_from_dict(task_cls, saved[task_name]))
    else:
        shape = ModelConfig(**runpy.run_path(f"configs/model_{args.size}.py")["model"])
    header = "| decode | rows | tokens | seconds | tok/s | vs eager | compile s | same tokens |\n" \
             "|---|---|---|---|---|---|---|---|"
    lines = [f"Device: {name}; torch {torch.__version__}; fp32. Each cell: the fastest of {args.repeats} calls "
             f"after one warm-up call (which also compiles); ratios are to eager in the same run.", ""]
    if trained is not None:
        problems = task.problems("train", args.prompts, seed=0)
        prompts = [tok.render_prompt(task.prompt(q)) for q in problems]
        max_new = min(args.new_tokens, trained.cfg.max_seq_len - max(map(len, prompts)))
        lines += [f"### 1. GRPO's shape: {len(prompts)} {task_name} prompts x {args.samples} samples, up to "
                  f"{max_new} new tokens, T=1, stop tokens on (checkpoint {args.checkpoint})", "", header]
        lines += compare_modes(trained, prompts, args.samples, max_new, tok.stop_ids, tok.pad_id, args.repeats,
                               modes)
        lines += compare_modes(trained, prompts[:1], 1, max_new, tok.stop_ids, tok.pad_id, args.repeats, modes)
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(shape, max_seq_len=max(shape.max_seq_len, args.new_tokens + 64)))
    model = model.to(device).eval()
    random_prompts = [[1 + (i * 7 + j) % 50 for j in range(16)] for i in range(args.prompts)]
    lines += ["", f"### 2. Random weights of the {'checkpoint' if trained else args.size} shape, no stop tokens: "
                  f"{args.new_tokens} new tokens per row", "", header]
    lines += compare_modes(model, random_prompts, args.samples, args.new_tokens, (), 0, args.repeats, modes)
    lines += compare_modes(model, random_prompts[:1], 1, args.new_tokens, (), 0, args.repeats, modes)

    lines += ["", f"### 3. Latent cache vs recomputing everything, {args.new_tokens} new tokens, eager, greedy", "",
              "| batch | with latent cache tok/s | recompute everything tok/s | ratio |", "|---|---|---|---|"]
    for batch in (1, 8):
        prompts = random_prompts[:batch]
        _, t_cache = timed(lambda: generate(model, prompts, args.new_tokens, temperature=0))
        _, t_full = timed(lambda: generate(model, prompts, args.new_tokens, temperature=0, use_cache=False))
        n = batch * args.new_tokens
        lines.append(f"| {batch} | {n / t_cache:,.0f} | {n / t_full:,.0f} | {t_full / t_cache:.1f}x |")
        print(lines[-1], flush=True)

    if trained is not None and trained.cfg.mtp_depth:
        problems = task.problems("test", 64, seed=0)
        prompts = [tok.render_prompt(task.prompt(q)) for q in problems]
        max_new = min(128, trained.cfg.max_seq_len - max(map(len, prompts)))
        lines += ["", f"### 4. MTP speculative vs plain (eager), greedy, {len(problems)} {task_name} test prompts",
                  "", "| batch | plain tok/s | speculative tok/s | ratio | drafts accepted | same output |",
                  "|---|---|---|---|---|---|"]
        for batch in (1, 16):
            plain_tokens = spec_tokens = 0
            t_plain = t_spec = 0.0
            same, accepted = True, []
            for i in range(0, len(prompts), batch):
                chunk = prompts[i:i + batch]
                a, ta = timed(lambda: generate(trained, chunk, max_new, temperature=0, stop_ids=tok.stop_ids))
                b, tb = timed(lambda: generate(trained, chunk, max_new, temperature=0, stop_ids=tok.stop_ids,
                                               speculative=True))
                plain_tokens += sum(map(len, a.tokens))
                spec_tokens += sum(map(len, b.tokens))
                t_plain, t_spec = t_plain + ta, t_spec + tb
                same &= a.tokens == b.tokens
                accepted.append(b.acceptance)
            lines.append(f"| {batch} | {plain_tokens / t_plain:,.0f} | {spec_tokens / t_spec:,.0f} | "
                         f"{t_plain / t_spec:.2f}x | {sum(accepted) / len(accepted):.0%} | {same} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        cmd = "python -m nanor1.bench.decode" + (f" --checkpoint {args.checkpoint}" if args.checkpoint else "")
        with open(args.out, "w") as f:
            f.write(f"# Decoding benchmark\n\n`{cmd} --out {args.out}`\n\n{text}")


if __name__ == "__main__":
    main()
