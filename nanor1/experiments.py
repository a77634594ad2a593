"""The small experiments the course assignments end with: each prints a table and draws one plot (CPU, minutes).

    python -m nanor1.experiments bpe --out out/exp             # bytes per token against vocabulary size
    python -m nanor1.experiments search --out out/exp          # Countdown traces: solved share, length vs patience
    python -m nanor1.experiments mla --out out/exp             # cache bytes per token, decoding with and without it
    python -m nanor1.experiments moe --out out/exp             # expert load over steps for three bias speeds
    python -m nanor1.experiments attention --out out/exp       # the Triton kernel's error vs the reference, by T
    python -m nanor1.experiments cross_entropy --out out/exp   # fused loss: error and logits held, by chunk rows
    python -m nanor1.experiments speculative --checkpoint out/arithmetic/sft --out out/exp   # acceptance vs T
(GRPO and rejection sampling end with their own scripts: train_grpo.py configs/arithmetic.py, nanor1.rejection.)
"""
import argparse
import os
import random
import runpy
import time

import torch

from nanor1.plotting import pyplot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def plot(path, xs, series, xlabel, ylabel, title, logx=False):
    """series: {label: ys}. Writes a PNG (nothing without matplotlib); returns its path or None."""
    plt = pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for label, ys in series.items():
        ax.plot(xs[:len(ys)], ys, marker=".", label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def table(header, rows):
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r))


def test_model_config(**overrides):
    from nanor1.model import ModelConfig
    return ModelConfig(**{**runpy.run_path(os.path.join(ROOT, "configs", "model_test.py"))["model"], **overrides})


def bpe(out):
    """Compression of held-out text (UTF-8 bytes per token) as the vocabulary grows: the tasks' text (digits
    never merge, so it saturates early) and English prose (the repository's docs, README.md held out)."""
    import glob
    from nanor1.tasks import corpus, make_task
    from nanor1.tokenizer import SPECIAL_TOKENS, train_tokenizer
    tasks = [make_task("arithmetic"), make_task("countdown")]
    docs = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    texts = {"task text": (list(corpus(tasks, n_per_task=500, seed=0)), list(corpus(tasks, n_per_task=200, seed=1))),
             "English (docs -> README)": ([open(f).read() for f in docs],
                                          [open(os.path.join(ROOT, "README.md")).read()])}
    sizes, series, rows = [265, 300, 384, 512, 1024, 2048], {}, []
    for name, (train, held_out) in texts.items():
        series[name] = []
        for v in sizes:
            tok = train_tokenizer(train, v)
            ratio = sum(len(t.encode()) for t in held_out) / sum(len(tok.encode_response(t)) for t in held_out)
            series[name].append(ratio)
            rows.append((name, v, tok.n_vocab - len(SPECIAL_TOKENS) - 256, ratio))
    table(["text", "vocab_size", "merges learned", "bytes/token"], rows)
    return plot(os.path.join(out, "bpe.png"), sizes, series, "vocab size", "UTF-8 bytes per token",
                "BPE compression", logx=True)


def search(out):
    """Countdown search traces: how often the depth-first search solves a problem before giving up, and how long
    its trace is, as the patience (dead ends allowed) grows."""
    from nanor1.tasks.countdown import Countdown, search_trace
    task = Countdown()
    problems = task.problems("train", 300, seed=0)
    patience, rows = [0, 1, 2, 4, 8, 16, 64], []
    for p in patience:
        traces = [search_trace(q["nums"], q["target"], p, task.cfg.max_value) for q in problems]
        rows.append((p, sum(t[2] for t in traces) / len(traces),
                     sum(len(t[0].splitlines()) for t in traces) / len(traces)))
    table(["patience", "solved", "trace lines"], rows)
    return plot(os.path.join(out, "search.png"), patience, {"solved share": [r[1] for r in rows],
                                                             "trace lines / 10": [r[2] / 10 for r in rows]},
                "patience (dead ends before giving up)", "", "Countdown search traces")


def mla(out):
    """The latent cache: bytes per token against caching every head's K and V, and decoding time per token with
    the cache against recomputing the whole prefix."""
    from nanor1.engine import generate
    from nanor1.model import GPT, KVCache
    cfg = test_model_config(attn_impl="torch", loss_impl="torch", mtp_depth=0)
    mha_bytes = cfg.n_layers * cfg.n_heads * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim) * 2
    print(f"cache bytes/token (bf16): MLA {KVCache.bytes_per_token(cfg)}, per-head K and V {mha_bytes}")
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    lengths, rows = [16, 32, 64, 128], []
    for n in lengths:
        times = []
        for use_cache in (True, False):
            t0 = time.perf_counter()
            generate(model, [[1, 2, 3]] * 8, n, temperature=0, use_cache=use_cache)
            times.append((time.perf_counter() - t0) / n * 1e3)
        rows.append((n, times[0], times[1]))
    table(["new tokens", "ms/token with cache", "ms/token recomputing"], rows)
    return plot(os.path.join(out, "mla.png"), lengths, {"latent cache": [r[1] for r in rows],
                                                         "recompute": [r[2] for r in rows]},
                "tokens generated", "ms per token (batch 8, CPU)", "decoding with the latent cache", logx=True)


def moe(out):
    """Aux-loss-free balancing: max/mean expert load over bias updates, for three update speeds gamma."""
    from nanor1.model import MoE
    cfg = test_model_config(n_routed_experts=8, n_activated_experts=2, n_expert_groups=1, n_limited_groups=1,
                            seq_aux_alpha=0.0)
    speeds, curves = [0.0, 0.001, 0.01], {}
    for gamma in speeds:
        torch.manual_seed(0)
        layer = MoE(test_model_config(**{**cfg.__dict__, "bias_update_speed": gamma})).train()
        torch.nn.init.normal_(layer.gate.weight, std=0.5)
        x = torch.randn(4, 64, cfg.dim) + 1.5 * layer.gate.weight[0].detach() / layer.gate.weight[0].norm()
        curve = []
        for _ in range(200):
            _, counts, _ = layer(x)
            curve.append((counts.max() / counts.float().mean()).item())
            layer.update_bias()
        curves[f"gamma={gamma}"] = curve
    table(["gamma", "max/mean load at step 0", "at step 200"], [(g, c[0], c[-1]) for g, c in
                                                                 zip(speeds, curves.values())])
    return plot(os.path.join(out, "moe.png"), list(range(200)), curves, "bias update", "max / mean expert load",
                "aux-loss-free balancing (V3 sec. 2.1.2)")


def attention(out):
    """The Triton flash-MLA kernel against the PyTorch reference (through the interpreter off the GPU)."""
    from nanor1.kernels import mla_attention
    lengths, series = [16, 48, 100, 160], {}
    for dtype in (torch.float32, torch.float16):
        errs = []
        for T in lengths:
            torch.manual_seed(0)
            q_n, k_n, v = (torch.randn(1, 2, T, d, dtype=dtype) for d in (32, 32, 32))
            q_r, k_r = torch.randn(1, 2, T, 16, dtype=dtype), torch.randn(1, T, 16, dtype=dtype)
            got = mla_attention(q_n, q_r, k_n, k_r, v, 48 ** -0.5, impl="triton")
            ref = mla_attention(*(t.float() for t in (q_n, q_r, k_n, k_r, v)), 48 ** -0.5, impl="torch")
            errs.append((got.float() - ref).abs().max().item())
        series[str(dtype).replace("torch.", "")] = errs
    table(["T"] + list(series), [(T, *(s[i] for s in series.values())) for i, T in enumerate(lengths)])
    return plot(os.path.join(out, "attention.png"), lengths, series, "sequence length T",
                "max |kernel - fp32 reference|", "flash MLA attention vs reference")


def cross_entropy(out):
    """Fused linear cross-entropy: the chunk of rows whose logits exist at once, against the error and the
    logits memory that chunk costs (the point of fusing: never all N x V logits)."""
    from nanor1.kernels.cross_entropy import fused_linear_cross_entropy
    from nanor1.kernels.reference import linear_cross_entropy
    torch.manual_seed(0)
    N, D, V = 256, 32, 1000
    hidden, weight = torch.randn(N, D, requires_grad=True), torch.randn(V, D, requires_grad=True)
    targets = torch.randint(0, V, (N,))
    ref = linear_cross_entropy(hidden, weight, targets)
    ref_grad = torch.autograd.grad(ref.sum(), (hidden, weight))
    chunks, rows = [16, 64, 256], []
    for chunk in chunks:
        loss = fused_linear_cross_entropy(hidden, weight, targets, chunk=chunk)
        grad = torch.autograd.grad(loss.sum(), (hidden, weight))
        err = max((loss - ref).abs().max().item(), *((a - b).abs().max().item() for a, b in zip(grad, ref_grad)))
        rows.append((chunk, err, chunk * V * 4 / 2 ** 10))
    table(["chunk rows", "max error (loss, grads)", "logits held (KiB)"], rows)
    return plot(os.path.join(out, "cross_entropy.png"), chunks, {"logits held (KiB)": [r[2] for r in rows],
                                                                 f"all N x V logits: {N * V * 4 // 1024} KiB":
                                                                 [N * V * 4 / 1024] * len(rows)},
                "chunk rows", "KiB", "fused linear cross-entropy", logx=True)


def speculative(out, checkpoint):
    """MTP speculative decoding on a trained checkpoint: acceptance and tokens per target forward by temperature."""
    from nanor1.checkpoint import load_model
    from nanor1.engine import generate
    from nanor1.tasks import make_task
    model, tok, _ = load_model(checkpoint, "cpu")
    task = make_task("arithmetic")
    prompts = [tok.render_prompt(task.prompt(p)) for p in task.problems("val", 64, seed=0)]
    temps, rows = [0.0, 0.5, 1.0, 1.5], []
    for t in temps:
        gen = generate(model, prompts, 40, temperature=t, stop_ids=tok.stop_ids, pad_id=tok.pad_id, seed=0,
                       speculative=True)
        rows.append((t, gen.acceptance, 1 + gen.acceptance))
    table(["temperature", "acceptance", "tokens per forward (about)"], rows)
    return plot(os.path.join(out, "speculative.png"), temps, {"acceptance": [r[1] for r in rows]},
                "temperature", "share of MTP drafts accepted", "speculative decoding")


EXPERIMENTS = {"bpe": bpe, "search": search, "mla": mla, "moe": moe, "attention": attention,
               "cross_entropy": cross_entropy, "speculative": speculative}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m nanor1.experiments", description=__doc__.split("\n\n")[0])
    p.add_argument("name", choices=list(EXPERIMENTS))
    p.add_argument("--out", default="out/experiments", help="folder for the PNG")
    p.add_argument("--checkpoint", default="out/arithmetic/sft", help="speculative: a checkpoint with MTP")
    args = p.parse_args(argv)
    if args.name in ("attention", "cross_entropy") and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    os.makedirs(args.out, exist_ok=True)
    random.seed(0)
    fn = EXPERIMENTS[args.name]
    png = fn(args.out, args.checkpoint) if args.name == "speculative" else fn(args.out)
    print(f"plot: {png}" if png else "plot: none (matplotlib is not installed)")


if __name__ == "__main__":
    main()
