"""Supervised fine-tuning (or pre-training from scratch) on task SFT targets: the loop behind train_sft.py.

    batch (length-bucketed, loss only on response tokens) -> model -> main CE + MTP + balance loss
    -> AdamW (warmup, cosine) with clipping and accumulation -> MoE bias update -> log / eval / checkpoint

The batch of step s depends only on (seed, s), so a resumed run sees exactly the batches an uninterrupted
one would. Multi-GPU: launch with torchrun; each rank takes its slice of every batch (DDP).
"""
import contextlib
import dataclasses
import json
import math
import os
import random
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from nanor1 import checkpoint
from nanor1.cli import report
from nanor1.config import ConfigError, check_ranges, config_from_dict, config_to_dict, require
from nanor1.device import DTYPES, autocast, pick_device, resolve_dtype
from nanor1.engine import DECODE_MODES
from nanor1.evaluate import evaluate_tasks, format_evals
from nanor1.jsonl import read_jsonl, truncate_log
from nanor1.model import GPT, ModelConfig, make_optimizer, num_params
from nanor1.plotting import plot_metrics
from nanor1.tasks import TASKS, ArithmeticConfig, CountdownConfig, GSM8KConfig, Rewards, get_tokenizer, make_tasks
from nanor1.tasks.splits import SPLITS
from nanor1.tokenizer import Tokenizer


@dataclasses.dataclass
class SFTConfig:
    out_dir: str = "out/sft"  # where ckpt.pt, metrics.jsonl, sft.png and tokenizer/ go
    init_from: str = ""  # a checkpoint (file or out dir) to start from; "" = random initialisation
    resume: bool = False  # continue out_dir/ckpt.pt where it stopped (model, optimizer, step, RNG)
    overwrite: bool = False  # a fresh run may replace the run already in out_dir (and retrain its tokenizer)
    seed: int = 0  # data order, initialisation, sampling
    device: str = "auto"  # 'auto': cuda, else mps, else cpu
    dtype: str = "auto"  # 'auto' (bf16 autocast on CUDA, else fp32), 'bf16' (autocast on any device), 'fp32'
    compile: bool = False  # torch.compile the model
    # data: a weighted mix of tasks, or a JSONL file of {"prompt", "response"} lines (rejection sampling)
    tasks: dict[str, float] = dataclasses.field(default_factory=lambda: {"arithmetic": 1.0})  # task -> share weight
    data_file: str = ""  # a JSONL of {prompt, response} to train on instead of tasks
    n_examples: int = 20000  # size of the pool of SFT examples drawn from the tasks
    train_problems: int = 0  # distinct train problems the examples come from (0: up to n_examples)
    max_len: int = 256  # longer examples are dropped (counted in the log)
    vocab_size: int = 1024  # tokenizer size (trained on the tasks' text when missing)
    tokenizer_dir: str = ""  # "" = out_dir/tokenizer (trained on the tasks' text when missing)
    arithmetic: ArithmeticConfig = dataclasses.field(default_factory=ArithmeticConfig)  # arithmetic task settings
    countdown: CountdownConfig = dataclasses.field(default_factory=CountdownConfig)  # Countdown task settings
    gsm8k: GSM8KConfig = dataclasses.field(default_factory=GSM8KConfig)
    rewards: Rewards = dataclasses.field(default_factory=Rewards)  # reward values (held-out scoring)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)  # model size and parts (configs/model_*.py)
    # optimisation
    batch_size: int = 32  # sequences per optimizer step (all ranks, all micro-steps together)
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 1000  # optimizer steps
    lr: float = 3e-3  # peak learning rate (AdamW)
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    warmup_steps: int = 50  # linear warmup steps
    weight_decay: float = 0.1  # AdamW weight decay (matrices only)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.95  # AdamW beta2
    grad_clip: float = 1.0  # max gradient norm
    # logging, evaluation, checkpoints
    log_every: int = 10  # steps between metrics.jsonl rows
    eval_every: int = 250  # 0 = only at the end
    eval_split: str = "val"  # where in-run evaluation looks: 'val' (tuning); 'test' is for reporting (sample.py)
    eval_problems: int = 100  # held-out problems per task
    eval_max_new_tokens: int = 64  # token budget of each held-out answer
    eval_batch_size: int = 64  # sequences per sampling batch in evaluation
    eval_samples: int = 1  # completions per held-out problem; accuracy is their mean (pass@1)
    eval_temperature: float = 0.0  # 0: greedy; 1: the policy as it samples (R1 reports sampled pass@1)
    decode: str = "eager"  # sampler: 'eager' (the reference), 'static' (fixed shapes), 'compiled' (torch.compile)
    save_every: int = 250  # steps between checkpoints
    progress: bool = True  # tqdm bar
    time_budget_min: float = 0.0  # stop cleanly (save, evaluate, plot) after this many minutes; 0: no limit

    def check(self):
        """Every key in range, so a typo fails in the first second rather than at step 250."""
        check_ranges(self, positive=("n_examples", "max_len", "vocab_size", "batch_size", "grad_accum", "lr",
                                     "log_every", "eval_problems", "eval_max_new_tokens", "eval_batch_size",
                                     "eval_samples", "save_every"),
                     non_negative=("max_steps", "train_problems", "time_budget_min", "warmup_steps", "weight_decay",
                                   "grad_clip", "eval_every",
                                   "eval_temperature"),
                     fractions=("min_lr_frac", "beta1", "beta2"))
        require(self.dtype in DTYPES, "dtype", f"must be one of {list(DTYPES)}, got {self.dtype!r}")
        require(self.decode in DECODE_MODES, "decode", f"must be one of {list(DECODE_MODES)}, got {self.decode!r}")
        require(self.eval_split in SPLITS, "eval_split", f"must be one of {list(SPLITS)}, got {self.eval_split!r}")
        unknown = [t for t in self.tasks if t not in TASKS]
        require(not unknown, "tasks", f"names unknown tasks {unknown} (known: {', '.join(TASKS)})")
        require(all(w >= 0 for w in self.tasks.values()), "tasks", "weights must be >= 0")
        require(self.data_file or sum(self.tasks.values()) > 0, "tasks", "needs a task of weight > 0 (or a data_file)")
        try:
            self.model.check()
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return self


# Keys that change WHAT an SFT run trains (the model, the data, the tokenizer); the rest say how it runs (lr
# schedule, logging, evaluation, device, dtype, kernels) and may change on --resume=true.
_HOW = ("model.attn_impl", "model.loss_impl", "model.moe_impl", "gsm8k.path", "gsm8k.download")


def defines_model(key):
    return key.startswith(("model.", "arithmetic.", "countdown.", "gsm8k.")) and key not in _HOW or key in (
        "tasks", "data_file", "n_examples", "train_problems", "max_len", "vocab_size", "seed", "tokenizer_dir",
        "init_from")


def read_jsonl_pairs(path):
    """A JSONL file of {"prompt": str, "response": str} -> list of (prompt, response); errors name file:line."""
    pairs = []
    for where, row in read_jsonl(path):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("response"), str):
            raise ValueError(f"{where}: expected string fields 'prompt' and 'response'")
        pairs.append((row["prompt"], row["response"]))
    return pairs


def build_examples(cfg, tok):
    """-> list of (ids, mask) and the number dropped for length."""
    if cfg.data_file:
        pairs = read_jsonl_pairs(cfg.data_file)
    else:
        total = sum(cfg.tasks.values())
        rng = random.Random(cfg.seed)
        pairs = []
        for task in make_tasks(cfg, cfg.tasks):
            n = round(cfg.n_examples * cfg.tasks[task.name] / total)
            # the distinct problems SFT may see; each is used equally often, every use with its own target
            pool = task.problems("train", min(n, cfg.train_problems or n), cfg.seed)
            pairs += [(task.prompt(p), task.sft_target(p, rng)) for p in (pool[i % len(pool)] for i in range(n))]
    examples, dropped = [], 0
    for prompt, response in pairs:
        ids, mask = tok.render(prompt, response)
        if len(ids) > cfg.max_len + 1:
            dropped += 1
            continue
        examples.append((ids, mask))
    if not examples:
        raise ValueError(f"no SFT example fits max_len={cfg.max_len} ({dropped} dropped)")
    return examples, dropped


def batch_indices(lengths, batch_size, seed, step):
    """The examples of optimizer step `step`: an epoch is a seeded shuffle, cut into chunks of 32 batches,
    each chunk sorted by length (length bucketing: little padding), its batches in shuffled order."""
    n_batches = max(1, len(lengths) // batch_size)
    epoch, k = divmod(step, n_batches)
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    order = order[:n_batches * batch_size] if len(order) >= batch_size else order
    chunk = 32 * batch_size
    batches = []
    for c in range(0, len(order), chunk):
        part = sorted(order[c:c + chunk], key=lambda i: lengths[i])
        batches += [part[b:b + batch_size] for b in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches[k]


def collate(examples, pad_id, device):
    """(ids, mask) pairs -> inputs (B, T), targets (B, T) with -100 where there is no loss (prompt, padding)."""
    T = max(len(ids) for ids, _ in examples) - 1
    inputs = torch.full((len(examples), T), pad_id, dtype=torch.long)
    targets = torch.full((len(examples), T), -100, dtype=torch.long)
    for b, (ids, mask) in enumerate(examples):
        ids_t, mask_t = torch.tensor(ids), torch.tensor(mask, dtype=torch.bool)
        inputs[b, :len(ids) - 1] = ids_t[:-1]
        targets[b, :len(ids) - 1] = torch.where(mask_t[1:], ids_t[1:], -100)
    return inputs.to(device), targets.to(device)


def lr_at(cfg, step):
    """Linear warmup, then cosine decay to min_lr_frac * lr (Loshchilov & Hutter 2017)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress)))


def setup_distributed(cfg):
    """torchrun sets RANK/WORLD_SIZE: -> (rank, world, device)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    want_cuda = pick_device(cfg.device).type == "cuda"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    if want_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    else:
        device = pick_device(cfg.device)
    return rank, world, device


def sync_moe_load(model, world):
    """Sum each MoE layer's token counts over ranks, so every replica moves its biases the same way."""
    if world > 1:
        for moe in model.moe_layers():
            dist.all_reduce(moe.load)


def check_replicas(model, world):
    """DDP must keep every replica identical (parameters and MoE biases): compare per-tensor checksums."""
    if world == 1:
        return
    sums = torch.stack([t.detach().double().sum() for t in list(model.parameters()) + list(model.buffers())])
    gathered = [torch.zeros_like(sums) for _ in range(world)]
    dist.all_gather(gathered, sums)
    if not all(torch.equal(gathered[0], g) for g in gathered[1:]):
        raise RuntimeError("DDP replicas diverged (parameters or MoE biases differ between ranks)")


def save_checkpoint(cfg, model, optimizer, step, tok, path=None):
    checkpoint.save(path or os.path.join(cfg.out_dir, "ckpt.pt"), model=model.state_dict(),
                    optimizer=optimizer.state_dict(), step=step, rng=checkpoint.rng_state(),
                    config=config_to_dict(cfg), model_config=config_to_dict(model.cfg),
                    tokenizer=checkpoint.tokenizer_to_dict(tok), kind="sft")


def train(cfg, on_step=None):
    """Run SFT as configured; returns the (unwrapped) model. on_step(step, metrics) is called after each step."""
    cfg.check()
    rank, world, device = setup_distributed(cfg)
    master = rank == 0
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    resume_ckpt = None
    if master:
        resume_ckpt = checkpoint.open_run(cfg.out_dir, cfg.resume, cfg.overwrite, config_to_dict(cfg), defines_model)
    if world > 1:
        dist.barrier()
        if not master and cfg.resume:
            resume_ckpt = checkpoint.load(os.path.join(cfg.out_dir, "ckpt.pt"))
    init_ckpt = checkpoint.load(cfg.init_from) if cfg.init_from and not cfg.resume else None
    source = resume_ckpt or init_ckpt
    if source is not None:
        tok = checkpoint.tokenizer_from_dict(source["tokenizer"])
        model_cfg = config_from_dict(ModelConfig, source["model_config"])
        for key in ("attn_impl", "loss_impl", "moe_impl"):  # how to run it may change, what it is may not
            setattr(model_cfg, key, getattr(cfg.model, key))
    else:
        tok_dir = cfg.tokenizer_dir or os.path.join(cfg.out_dir, "tokenizer")
        if master:  # trained on the tasks' own text the first time, then read from tok_dir
            tok = get_tokenizer(tok_dir, make_tasks(cfg, cfg.tasks), cfg.vocab_size, retrain=cfg.overwrite)
        if world > 1:
            dist.barrier()
        if not master:
            tok = Tokenizer.load(tok_dir)
        model_cfg = dataclasses.replace(cfg.model, vocab_size=tok.n_vocab,
                                        max_seq_len=max(cfg.model.max_seq_len, cfg.max_len + 1))
    model = GPT(model_cfg).to(device)
    if source is not None:
        model.load_state_dict(source["model"])
    optimizer = make_optimizer(model, cfg, device)
    step = 0
    if resume_ckpt is not None:
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        step = resume_ckpt["step"]
        checkpoint.set_rng_state(resume_ckpt["rng"])

    examples, dropped = build_examples(cfg, tok)
    lengths = [len(ids) for ids, _ in examples]
    eval_tasks = make_tasks(cfg, [t for t, w in cfg.tasks.items() if w > 0])  # held-out accuracy on these
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    if cfg.compile:
        train_model = torch.compile(train_model)
    precision = autocast(device, cfg.dtype)  # bf16 autocast on CUDA by default; fp32 params, grads, optimizer
    if cfg.batch_size % (world * cfg.grad_accum):
        raise ValueError(f"batch_size={cfg.batch_size} must be divisible by world size {world} x "
                         f"grad_accum {cfg.grad_accum}")
    micro = cfg.batch_size // (world * cfg.grad_accum)
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    n_params = sum(p.numel() for p in model.parameters())
    if master:
        report("sft", device=f"{device} x {world}" if world > 1 else str(device),
               dtype=resolve_dtype(device, cfg.dtype),
               model=f"{n_params / 1e6:.2f}M parameters ({num_params(model_cfg)['active'] / 1e6:.2f}M active), "
                     f"vocab {tok.n_vocab}",
               data=f"{len(examples)} examples ({dropped} longer than max_len={cfg.max_len} dropped), "
                    f"{'file ' + cfg.data_file if cfg.data_file else 'tasks ' + ', '.join(cfg.tasks)}",
               steps=f"{step} -> {cfg.max_steps} ({'resumed' if step else 'from ' + (cfg.init_from or 'scratch')})",
               outputs=f"{cfg.out_dir}/ckpt.pt, metrics.jsonl, sft.png")
    if master and step == 0:
        open(metrics_path, "w").close()
        log = {"step": 0, "examples": len(examples), "dropped_too_long": dropped, "vocab": tok.n_vocab,
               "params": n_params, "world": world}
        with open(metrics_path, "a") as f:
            f.write(json.dumps(log) + "\n")
    elif master:
        truncate_log(metrics_path, step)  # rows a killed run wrote after its last checkpoint

    bar = tqdm(total=cfg.max_steps, initial=step, disable=not (master and cfg.progress), desc="sft")
    moe_layers = model.moe_layers()
    t_start = t_last = time.time()
    tokens_since, start_step, evals, out_of_time = 0, step, {}, False
    try:
        while step < cfg.max_steps and not out_of_time:
            model.train()
            lr = lr_at(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = batch_indices(lengths, cfg.batch_size, cfg.seed, step)
            totals = {"loss": 0.0, "main": 0.0, "mtp": 0.0, "aux": 0.0}
            for a in range(cfg.grad_accum):
                begin = (a * world + rank) * micro
                inputs, targets = collate([examples[i] for i in batch[begin:begin + micro]], tok.pad_id, device)
                tokens_since += int((targets != -100).sum()) * world
                last_micro = a == cfg.grad_accum - 1  # DDP all-reduces gradients only on the last micro-step
                ctx = train_model.no_sync() if (world > 1 and not last_micro) else contextlib.nullcontext()
                with ctx, precision:
                    out = train_model(inputs, targets=targets)
                    (out.loss / cfg.grad_accum).backward()
                for key in ("main", "mtp", "aux"):
                    totals[key] += out.losses[key].item() / cfg.grad_accum
                totals["loss"] += out.loss.item() / cfg.grad_accum
            if not math.isfinite(totals["loss"]):  # stop before the optimizer writes NaN into the weights
                raise FloatingPointError(f"SFT step {step + 1}: the loss is {totals['loss']} (lr {lr:.3g}); nothing "
                                         f"of this step was applied or saved. Lower lr or check the data.")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync_moe_load(model, world)
            loads = torch.stack([m.load for m in moe_layers]) if moe_layers else None
            imbalance = (loads.max(1).values / loads.mean(1).clamp(min=1)).mean().item() if loads is not None else 0.0
            model.update_moe_biases()
            step += 1
            metrics = {"step": step, **totals, "lr": lr, "grad_norm": grad_norm, "moe_max_over_mean": imbalance}
            bar.update(1)
            bar.set_postfix(loss=f"{totals['loss']:.3f}")
            out_of_time = budget_spent(cfg, t_start, world, device)
            last = step == cfg.max_steps or out_of_time  # the budget's last step is a final step: save, evaluate
            if step % cfg.save_every == 0 or last:  # saved before evaluating: nothing lost to a crash
                check_replicas(model, world)
                if master:
                    save_checkpoint(cfg, model, optimizer, step, tok)
            if master and (step % cfg.log_every == 0 or last):
                now = time.time()
                metrics["tokens_per_s"] = tokens_since / (now - t_last)
                t_last, tokens_since = now, 0
                if (cfg.eval_every and step % cfg.eval_every == 0) or last:
                    evals = evaluate_tasks(model, tok, eval_tasks, cfg, progress=cfg.progress)
                    metrics.update(evals)
                    bar.write(f"step {step}: loss {totals['loss']:.4f}, " + format_evals(evals))
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            if on_step is not None:
                on_step(step, metrics)
    except KeyboardInterrupt:
        if master:  # Ctrl-C loses nothing: the last finished step is saved, --resume=true continues it
            save_checkpoint(cfg, model, optimizer, step, tok)
            bar.write(f"interrupted: saved step {step} to {cfg.out_dir}/ckpt.pt")
        raise
    finally:
        bar.close()
    if master:
        plot_path = os.path.join(cfg.out_dir, "sft.png")
        plotted = plot_metrics(metrics_path, plot_path,
                               ["loss", "main", "mtp", "aux", "lr", "grad_norm", "moe_max_over_mean", "tokens_per_s"]
                               + [k for k in _eval_keys(eval_tasks)], title=f"SFT {cfg.out_dir}")
        stopped = f" (time budget of {cfg.time_budget_min:g} min reached; --resume=true continues)" \
            if out_of_time else ""
        report("sft done", steps=f"{start_step} -> {step} of {cfg.max_steps} in {time.time() - t_start:.0f} s"
                                 f"{stopped}",
               held_out=format_evals(evals) or "(not evaluated)",
               checkpoint=os.path.join(cfg.out_dir, "ckpt.pt"),
               plot=plotted or "(none: matplotlib is not installed)")
    return model


def budget_spent(cfg, t_start, world=1, device=None):
    """Has the run used its time_budget_min? Under DDP rank 0's clock decides for all (no rank stops alone)."""
    spent = bool(cfg.time_budget_min) and time.time() - t_start >= 60 * cfg.time_budget_min
    if world > 1:
        flag = torch.tensor([float(spent)], device=device)
        dist.broadcast(flag, src=0)
        spent = bool(flag.item())
    return spent


def _eval_keys(tasks):
    return [f"eval/{t.name}/{m}" for t in tasks for m in ("acc", "len")]

