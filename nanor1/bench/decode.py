"""Decoding benchmark (a script, not a test).

    python -m nanor1.bench.decode [--checkpoint out/sft_arithmetic_laptop] [--out docs/bench_decode_cpu.md]

Table 1: tokens/s generating 512 new tokens with MLA's latent cache vs recomputing the whole sequence each
step (random weights of the checkpoint's shape, max_seq_len raised to fit), batch 1 and 8.
Table 2: MTP self-speculative vs plain decoding, greedy, on the checkpoint's own task prompts (stopping at
</answer>): tokens/s and the share of drafts accepted. Ratios are against the baseline of the same run.
"""
import argparse
import dataclasses
import platform
import runpy
import time

import torch

from nanor1 import checkpoint
from nanor1.config import config_from_dict
from nanor1.engine import generate
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


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default=None, help="trained model for table 2 (table 1 uses its shape)")
    p.add_argument("--size", default="laptop", help="model size for table 1 when no checkpoint is given")
    p.add_argument("--new_tokens", type=int, default=512)
    p.add_argument("--problems", type=int, default=64)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    trained = tok = ckpt = None
    if args.checkpoint:
        trained, tok, ckpt = checkpoint.load_model(args.checkpoint, device)
        shape = trained.cfg
    else:
        shape = ModelConfig(**runpy.run_path(f"configs/model_{args.size}.py")["model"])
    lines = [f"Device: {name}; torch {torch.__version__}; fp32.", "",
             f"### {args.new_tokens} new tokens, random weights of the {'checkpoint' if trained else args.size} shape",
             "", "| batch | with latent cache tok/s | recompute everything tok/s | ratio |", "|---|---|---|---|"]
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(shape, max_seq_len=args.new_tokens + 64)).to(device).eval()
    for batch in (1, 8):
        prompts = [[1 + (i * 7 + j) % 50 for j in range(16)] for i in range(batch)]
        _, t_cache = timed(lambda: generate(model, prompts, args.new_tokens, temperature=0))
        _, t_full = timed(lambda: generate(model, prompts, args.new_tokens, temperature=0, use_cache=False))
        n = batch * args.new_tokens
        lines.append(f"| {batch} | {n / t_cache:,.0f} | {n / t_full:,.0f} | {t_full / t_cache:.1f}x |")
        print(lines[-1], flush=True)
    if trained is not None:
        saved = ckpt["config"]
        task_name = next(t for t, w in saved["tasks"].items() if w > 0)
        task_cls = {"arithmetic": ArithmeticConfig, "countdown": CountdownConfig, "gsm8k": GSM8KConfig}[task_name]
        task = TASKS[task_name](config_from_dict(task_cls, saved[task_name]))
        problems = task.problems("test", args.problems, 0)
        prompts = [tok.render_prompt(task.prompt(q)) for q in problems]
        max_new = min(128, trained.cfg.max_seq_len - max(map(len, prompts)))
        lines += ["", f"### MTP speculative vs plain, greedy, {len(problems)} {task_name} test prompts, "
                      f"checkpoint {args.checkpoint}", "",
                  "| batch | plain tok/s | speculative tok/s | ratio | drafts accepted | same output |",
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
