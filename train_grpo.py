"""GRPO on a task's correctness reward, from an SFT cold start (the DeepSeek-R1 recipe at toy scale).

    python train_grpo.py configs/countdown.py [--key=value ...]
    python train_grpo.py configs/countdown.py --resume=true
    python train_grpo.py --help                               # every config key, its default and meaning

If the cold-start checkpoint is missing, the SFT stage configured under `sft` runs first (it trains the
tokenizer too); each stage resumes from its own checkpoint in out/. Each GRPO step:
  1. B prompts x G samples from the engine (one prefill per prompt, fanned out);
  2. rewards from the task's rule-based verifier; group advantages (nanor1/grpo.py);
  3. mu passes of the clipped policy loss over the batch (+ beta * KL to the frozen cold start);
  4. metrics (reward, accuracy, response length, truncation, zero-variance groups, KL, entropy, clip
     fraction, grad norm, tokens/s) to out_dir/metrics.jsonl and out_dir/grpo.png; held-out accuracy
     every eval_every steps.
"""
import contextlib
import copy
import dataclasses
import json
import math
import os
import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from nanor1 import checkpoint
from nanor1.cli import main, report
from nanor1.config import ConfigError, check_ranges, config_diff, config_to_dict, require
from nanor1.device import DTYPES, autocast, resolve_dtype
from nanor1.engine import DECODE_MODES, generate
from nanor1.evaluate import evaluate_tasks, format_evals, load_outcomes, task_traits
from nanor1.grpo import LOSS_NORMS, group_advantages, policy_loss
from nanor1.jsonl import read_jsonl, truncate_log
from nanor1.model import make_optimizer, num_params
from nanor1.plotting import plot_metrics
from nanor1.sft import (SFTConfig, budget_spent, defines_model, setup_distributed, sync_moe_load,
                        train as train_sft)
from nanor1.tasks import ArithmeticConfig, CountdownConfig, GSM8KConfig, Rewards, make_tasks
from nanor1.tasks.splits import SPLITS


@dataclasses.dataclass
class GRPOConfig:
    out_dir: str = "out/grpo"  # where ckpt.pt, metrics.jsonl and grpo.png go
    init_from: str = ""  # a checkpoint to start from; "" = sft.out_dir, trained there first if missing
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)  # the cold start
    resume: bool = False  # continue out_dir/ckpt.pt where it stopped
    overwrite: bool = False  # a fresh run may replace the run already in out_dir
    seed: int = 0  # prompts, sampling and initialisation
    device: str = "auto"  # 'auto': cuda, else mps, else cpu
    dtype: str = "auto"  # 'auto' (bf16 autocast on CUDA, else fp32), 'bf16' (autocast on any device), 'fp32'
    task: str = "countdown"  # arithmetic, countdown or gsm8k
    arithmetic: ArithmeticConfig = dataclasses.field(default_factory=ArithmeticConfig)  # arithmetic task settings
    countdown: CountdownConfig = dataclasses.field(default_factory=CountdownConfig)  # Countdown task settings
    gsm8k: GSM8KConfig = dataclasses.field(default_factory=GSM8KConfig)
    rewards: Rewards = dataclasses.field(default_factory=Rewards)  # reward values: none / format / correct
    # (the four groups above are also the cold start's: check() copies them into sft)
    # sampling
    steps: int = 200  # GRPO steps
    prompts_per_step: int = 16  # B
    group_size: int = 8  # G
    max_new_tokens: int = 256  # longest response; longer ones are truncated
    temperature: float = 1.0  # sampling temperature (must be 1: the ratio needs pi itself)
    top_k: int = 0  # must be 0 in GRPO (a filtered sampler is not pi)
    top_p: float = 1.0  # must be 1 in GRPO (a filtered sampler is not pi)
    decode: str = "eager"  # sampler: 'eager' (the reference), 'static' (fixed shapes), 'compiled' (torch.compile)
    # objective
    mu: int = 1  # policy updates per batch (GRPO's inner iterations); 1: pi_old is the update's own forward
    eps_low: float = 0.2  # clip range below 1 (GRPO eq. 3)
    eps_high: float = 0.28  # clip-higher (DAPO); set equal to eps_low for the original GRPO
    beta: float = 0.0  # KL weight; 0 needs no reference model
    kl_estimator: str = "k3"  # k1, k2 or k3 (Schulman 2020; GRPO uses k3)
    loss_norm: str = "token"  # 'sequence' (GRPO), 'token' (DAPO), 'constant' (Dr. GRPO)
    scale_adv_by_std: bool = True  # False: Dr. GRPO's mean-only advantage
    dynamic_sampling: bool = False  # DAPO: drop groups whose samples are all right or all wrong
    refill_rounds: int = 0  # DAPO: with dynamic_sampling, sample up to this many extra rounds to fill B groups
    overlong_buffer: int = 0  # DAPO's soft overlong punishment over the last N tokens before max_new_tokens
    mask_truncated: bool = True  # responses cut at max_new_tokens get no loss
    # optimisation
    lr: float = 1e-4  # learning rate (AdamW)
    warmup_steps: int = 5  # linear warmup steps
    weight_decay: float = 0.0  # AdamW weight decay (matrices only)
    beta1: float = 0.9  # AdamW beta1
    beta2: float = 0.99  # AdamW beta2
    grad_clip: float = 1.0  # max gradient norm
    micro_batch: int = 64  # sequences per forward in the update
    # MoE aux-loss-free balancing during GRPO. Off: DeepSeek-V3 sets the bias update speed gamma to 0 for the
    # end of pre-training (sec. 4.2), and a policy-gradient batch (G samples of B prompts) is a narrow, skewed
    # sample of the data, so balancing on it would move routing for reasons unrelated to the reward.
    moe_bias_update: bool = False  # update the MoE routing bias during GRPO (see the comment above)
    # logging
    log_every: int = 1  # steps between metrics.jsonl rows
    eval_every: int = 20  # steps between held-out evaluations
    eval_split: str = "val"  # where in-run evaluation looks: 'val' (tuning); 'test' is for reporting (sample.py)
    eval_problems: int = 200  # held-out problems (distinct, drawn without replacement)
    eval_max_new_tokens: int = 256  # token budget of each held-out answer
    eval_batch_size: int = 64  # sequences per sampling batch in evaluation
    eval_samples: int = 1  # completions per held-out problem; accuracy is their mean (pass@1)
    eval_temperature: float = 0.0  # 0: greedy; 1.0: the policy as it samples (R1 reports sampled pass@1)
    save_every: int = 50  # steps between checkpoints
    show_completions: bool = True  # print two held-out completions at each evaluation
    completions_logged: int = 4  # held-out problems whose completions completions.md follows across steps
    progress: bool = True  # tqdm progress bars
    time_budget_min: float = 0.0  # stop cleanly (save, evaluate, plot) this many minutes after the start, cold
    #   start included (the SFT stage has its own sft.time_budget_min); 0: no limit

    def check(self):
        if self.loss_norm not in LOSS_NORMS:
            raise ConfigError(f"config key 'loss_norm' must be one of {list(LOSS_NORMS)}, got {self.loss_norm!r}")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ConfigError(f"config key 'kl_estimator' must be 'k1', 'k2' or 'k3', got {self.kl_estimator!r}")
        if self.task not in ("arithmetic", "countdown", "gsm8k"):
            raise ConfigError(f"config key 'task' must be arithmetic, countdown or gsm8k, got {self.task!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"config key 'dtype' must be one of {list(DTYPES)}, got {self.dtype!r}")
        if self.decode not in DECODE_MODES:
            raise ConfigError(f"config key 'decode' must be one of {list(DECODE_MODES)}, got {self.decode!r}")
        if self.group_size < 2:
            raise ConfigError("config key 'group_size' must be at least 2 (advantages are relative to the group)")
        # One task definition for both stages: the cold start trains on the task GRPO then rewards, so the
        # top-level task groups (and --countdown.give_up=... on the command line) are the SFT stage's too.
        for group in ("arithmetic", "countdown", "gsm8k", "rewards"):
            ours = getattr(self, group)
            if getattr(self.sft, group) != ours:
                setattr(self.sft, group, copy.deepcopy(ours))
        # The ratio pi / pi_old and the KL are computed with the policy's own softmax: the samples must come
        # from exactly that distribution, so no temperature, top-k or top-p other than the identity.
        require(self.temperature == 1.0, "temperature", f"must be 1.0 in GRPO (got {self.temperature}): samples "
                "must come from the policy whose log-probs the ratio uses")
        require(self.top_k == 0 and self.top_p == 1.0, "top_k", f"must be 0 and top_p 1.0 in GRPO (got {self.top_k}, "
                f"{self.top_p}): a filtered sampler is not the policy the ratio uses")
        require(self.eval_split in SPLITS, "eval_split", f"must be one of {list(SPLITS)}, got {self.eval_split!r}")
        check_ranges(self, positive=("steps", "prompts_per_step", "max_new_tokens", "mu", "lr", "micro_batch",
                                     "log_every", "eval_every", "eval_problems", "eval_max_new_tokens",
                                     "eval_batch_size", "eval_samples", "save_every"),
                     non_negative=("time_budget_min", "refill_rounds", "overlong_buffer", "eps_low", "eps_high", "beta",
                                   "warmup_steps", "weight_decay", "grad_clip",
                                   "eval_temperature"),
                     fractions=("beta1", "beta2"))
        self.sft.check()
        return self


def cold_start(cfg):
    """The SFT checkpoint GRPO starts from: init_from, or sft.out_dir (trained or finished there if needed).
    An existing cold start trained with other settings (model, task, data) is an error naming the keys, not
    silently reused; --sft.overwrite=true retrains it."""
    if cfg.init_from:
        return cfg.init_from
    path = os.path.join(cfg.sft.out_dir, "ckpt.pt")
    exists = os.path.exists(path) and not cfg.sft.overwrite
    if exists:
        saved = checkpoint.load(path)
        stale = config_diff(saved.get("config", {}), config_to_dict(cfg.sft), defines_model)
        if stale:
            raise ConfigError(f"the cold start in {cfg.sft.out_dir} was trained with other settings: "
                              + "; ".join(stale) + " (--sft.overwrite=true retrains it, or set another sft.out_dir)")
        if saved["step"] >= cfg.sft.max_steps:
            return path
    print(f"cold start: SFT into {cfg.sft.out_dir} ({'resuming' if exists else 'from scratch'})")
    train_sft(dataclasses.replace(cfg.sft, resume=exists))
    return path


def micro_batches(targets, micro_batch):
    """(row slice, columns used) per micro-batch: right padding past a micro-batch's last target is cut
    (exact under causal attention), so rows sorted by length waste little compute."""
    columns = torch.arange(1, targets.size(1) + 1, device=targets.device)
    used = ((targets != -100) * columns).amax(1).tolist()  # per row: columns up to its last target (0: none)
    return [(slice(i, i + micro_batch), max(used[i:i + micro_batch] + [1]))
            for i in range(0, targets.size(0), micro_batch)]


def token_logprobs(model, inputs, targets, micro_batch, precision=contextlib.nullcontext):
    """log pi(target token) for every position, no gradient: (N, T), 0 where target is -100 (pi_ref; pi_old when
    mu > 1). `precision` makes the context of each forward; it must be the update's own (autocast on the GPU), or
    the ratio pi / pi_old is not 1 at the first inner step (bf16 vs fp32 log-probs differ by ~5e-3 per token)."""
    out = torch.zeros(targets.shape, dtype=torch.float32, device=targets.device)
    with torch.no_grad():
        for rows, T in micro_batches(targets, micro_batch):
            with precision():
                out[rows, :T] = -model(inputs[rows, :T], targets=targets[rows, :T], with_mtp=False).token_loss.float()
    return out


def build_batch(prompts, responses, pad_id, device):
    """Right-padded [prompt + response] rows -> inputs, targets (-100 off the response), response mask."""
    rows = [p + r for p, r in zip(prompts, responses)]
    T = max(len(r) for r in rows) - 1
    inputs = torch.full((len(rows), T), pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (p, row) in enumerate(zip(prompts, rows)):
        inputs[i, :len(row) - 1] = torch.tensor(row[:-1])
        targets[i, len(p) - 1:len(row) - 1] = torch.tensor(row[len(p):])
    return inputs.to(device), targets.to(device), (targets != -100).to(device)


def sample_groups(cfg, model, tok, task, seed, n_prompts, precision, rank=0, world=1):
    """n_prompts train prompts x G samples from the policy, scored. -> list of groups, one dict per prompt:
    prompt ids, tokens / finished / texts / scores / rewards (G each), and the generation time.
    Under torchrun each rank takes every world-th prompt (whole groups stay on one rank)."""
    G = cfg.group_size
    problems = task.problems("train", n_prompts, seed=seed)[rank::world]
    prompts = [tok.render_prompt(task.prompt(p)) for p in problems]
    t0 = time.time()
    with precision():
        gen = generate(model, prompts, cfg.max_new_tokens, n=G, temperature=cfg.temperature, top_k=cfg.top_k,
                       top_p=cfg.top_p, stop_ids=tok.stop_ids, pad_id=tok.pad_id, seed=seed + 1_000_033 * rank,
                       decode=cfg.decode)
    seconds = time.time() - t0
    groups = []
    for j, (problem, prompt) in enumerate(zip(problems, prompts)):
        rows = range(j * G, (j + 1) * G)
        texts = [tok.decode_response(gen.tokens[r]) for r in rows]
        scores = [task.score(problem, text) for text in texts]
        lengths = [len(gen.tokens[r]) for r in rows]
        rewards = [s.reward + overlong_penalty(n, cfg.max_new_tokens, cfg.overlong_buffer)
                   for s, n in zip(scores, lengths)]
        groups.append({"prompt": prompt, "tokens": [gen.tokens[r] for r in rows],
                       "finished": [gen.finished[r] for r in rows], "texts": texts, "scores": scores,
                       "rewards": rewards, "seconds": seconds / len(problems)})
    return groups


def overlong_penalty(length, max_len, buffer):
    """DAPO's soft overlong punishment (eq. 13): 0 up to max_len - buffer, then linearly down to -1 at max_len."""
    if buffer <= 0 or length <= max_len - buffer:
        return 0.0
    return max(-1.0, (max_len - buffer - length) / buffer)


def informative(group):
    """DAPO's dynamic-sampling filter: a group whose samples are all right or all wrong has no accuracy signal."""
    n_correct = sum(s.correct for s in group["scores"])
    return 0 < n_correct < len(group["scores"])


def collect_batch(cfg, model, tok, task, step, precision, rank=0, world=1):
    """The step's groups: B prompts x G samples; with dynamic sampling, the uninformative groups are dropped and
    (DAPO) more prompts are sampled, up to refill_rounds extra rounds, until B informative groups are in hand.
    -> (groups to learn from, the first round's groups (unbiased: the metrics), rounds sampled)."""
    B = cfg.prompts_per_step
    first = sample_groups(cfg, model, tok, task, cfg.seed * 1_000_003 + step, B, precision, rank, world)
    if not cfg.dynamic_sampling:
        return first, first, 1
    kept, rounds = [g for g in first if informative(g)], 1
    while len(kept) < len(first) and rounds <= cfg.refill_rounds:  # each rank fills its own share
        more = sample_groups(cfg, model, tok, task, cfg.seed * 1_000_003 + step + 7_919 * rounds, B, precision,
                             rank, world)
        kept += [g for g in more if informative(g)]
        rounds += 1
    return kept[:len(first)], first, rounds


def grpo_step(cfg, model, ref_model, optimizer, tok, task, step, device, rank=0, world=1):
    """One GRPO step: sample (and refill), score, update. -> metrics dict (over all ranks under torchrun)."""
    G = cfg.group_size
    precision = lambda: autocast(device, cfg.dtype)  # noqa: E731  one context for sampling, pi_old, pi_ref, update
    groups, first, rounds = collect_batch(cfg, model, tok, task, step, precision, rank, world)
    scores = [s for g in first for s in g["scores"]]
    lengths = torch.tensor([len(t) for g in first for t in g["tokens"]], dtype=torch.float32)
    metrics = {"step": step + 1, "reward": sum(r for g in first for r in g["rewards"]) / len(scores),
               "accuracy": sum(s.correct for s in scores) / len(scores),
               "format": sum(s.answer is not None for s in scores) / len(scores),
               "length": lengths.mean().item(), "length_min": lengths.min().item(),
               "length_max": lengths.max().item(),
               "truncated": sum(not f for g in first for f in g["finished"]) / len(scores),
               "zero_variance_groups": sum(not informative(g) for g in first) / len(first),
               "sampling_rounds": rounds, "groups_used": len(groups),
               "gen_tokens_per_s": lengths.sum().item() / max(sum(g["seconds"] for g in first), 1e-9)}
    traits = [task_traits(task, t) for g in first for t in g["texts"]]  # e.g. Countdown's gave_up
    metrics.update({k: sum(t[k] for t in traits) / len(traits) for k in traits[0]})
    if world > 1:
        metrics = reduce_metrics(metrics, world, device)
    if all_ranks_sum(len(groups), world, device) == 0:  # nothing to learn anywhere (null in metrics.jsonl)
        metrics.update(updated=0, kl=None, entropy=None, clip_frac=None, grad_norm=None, loss=None, ratio=None,
                       ratio_min=None, ratio_max=None)
        return metrics
    if not groups:  # this rank alone has nothing: it joins the others' update with zero gradient
        metrics.update(policy_update(cfg, model, ref_model, optimizer, None, None, None, None, precision, step,
                                     world, device))
        return metrics
    rewards = torch.tensor([g["rewards"] for g in groups], dtype=torch.float32)  # (groups, G)
    advantages = group_advantages(rewards, cfg.scale_adv_by_std).flatten()
    prompts = [g["prompt"] for g in groups for _ in range(G)]
    tokens = [t for g in groups for t in g["tokens"]]
    truncated = torch.tensor([not f for g in groups for f in g["finished"]])
    rows = sorted(range(len(tokens)), key=lambda i: len(prompts[i]) + len(tokens[i]))  # similar lengths together
    inputs, targets, mask = build_batch([prompts[i] for i in rows], [tokens[i] for i in rows], tok.pad_id, device)
    if cfg.mask_truncated:
        mask &= ~truncated[rows].to(device)[:, None]
    metrics.update(policy_update(cfg, model, ref_model, optimizer, inputs, targets, mask,
                                 advantages[rows].to(device), precision, step, world, device))
    return metrics


def all_ranks_sum(value, world, device, op="sum"):
    """A number summed (or max/min-ed) over the torchrun ranks; the number itself with one process."""
    if world == 1:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t.item()


def reduce_metrics(metrics, world, device):
    """Per-rank metrics -> the batch's: means of means (ranks hold equal shares), min/max, sums of counts."""
    out = {}
    for key, value in metrics.items():
        if key == "step" or value is None:
            out[key] = value
        elif key in ("length_min",):
            out[key] = all_ranks_sum(value, world, device, "min")
        elif key in ("length_max", "sampling_rounds"):
            out[key] = all_ranks_sum(value, world, device, "max")
        elif key in ("groups_used", "gen_tokens_per_s"):
            out[key] = all_ranks_sum(value, world, device)
        else:
            out[key] = all_ranks_sum(value, world, device) / world
    return out


def read_stats(micro_stats, device):
    """policy_loss's stats of every micro-batch and pass (0-dim tensors, or floats) -> floats, read back from the
    device in one transfer: clip_frac, kl and ratio averaged over the micro-batches, ratio_min/max over all."""
    keys = ("clip_frac", "kl", "ratio", "ratio_min", "ratio_max")
    table = torch.stack([torch.stack([torch.as_tensor(stats[k], dtype=torch.float32, device=device) for k in keys])
                         for stats in micro_stats])  # (micro-batches x passes, 5)
    clip_frac, kl, ratio = table[:, :3].mean(0)
    summary = torch.stack([clip_frac, kl, ratio, table[:, 3].min(), table[:, 4].max()]).tolist()
    return dict(zip(keys, summary))


def policy_update(cfg, model, ref_model, optimizer, inputs, targets, mask, adv, precision, step, world=1,
                  device=None):
    """mu passes of the clipped objective (+ beta KL) over the batch, in micro-batches. -> metrics dict.
    Under torchrun each rank holds a share of the rows: the normalisers count every rank's tokens/rows, each rank
    backpropagates its share of the global loss and the gradients are summed, so the step equals one process's
    update on the whole batch. inputs None: this rank has no rows (it contributes zero gradient)."""
    model.train()
    empty = inputs is None
    # pi_old = the sampling policy. With mu = 1 the one update starts at pi_old, so its log-probs are this pass's
    # own, detached (ratio exactly 1): no separate forward. With mu > 1 they are computed once, before the passes.
    one_pass = cfg.mu == 1
    if not empty:
        old_logp = None if one_pass else token_logprobs(model, inputs, targets, cfg.micro_batch, precision)
        ref_logp = token_logprobs(ref_model, inputs, targets, cfg.micro_batch, precision) if cfg.beta > 0 else None
    n_rows = all_ranks_sum(0 if empty else inputs.size(0), world, device)
    row_tokens = [] if empty else mask.sum(1).tolist()  # response tokens per row, read back once
    rank_tokens = sum(row_tokens)
    n_tokens = all_ranks_sum(rank_tokens, world, device)
    # Nothing below reads a number back from the device per micro-batch (on a GPU each read is a host sync that
    # stalls the queue): policy_loss's stats stay tensors, collected and read once at the end.
    micro_stats = []
    objective = 0.0  # the whole batch's loss (micro-batch losses weighted by their share), mean over the passes
    entropy_sum = 0.0  # -log pi_old summed over the response tokens (the metric 'entropy': its sample estimate)
    t1 = time.time()
    batches = [] if empty else micro_batches(targets, cfg.micro_batch)
    for inner in range(cfg.mu):
        optimizer.zero_grad(set_to_none=world == 1)
        if world > 1:  # every rank must hold a gradient for every parameter it sums (a rank may have no rows)
            for p in model.parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        pass_loss = 0.0
        for sl, T in batches:
            with precision():
                out = model(inputs[sl, :T], targets=targets[sl, :T], with_mtp=False)
            logp = -out.token_loss.float()  # (rows, T) log pi_theta of each sampled token
            old = logp.detach() if one_pass else old_logp[sl, :T]
            if inner == 0:  # pi_old is the same in every pass
                entropy_sum = entropy_sum - torch.where(mask[sl, :T].bool(), old, 0.0).sum()
            loss, stats = policy_loss(logp, old, adv[sl], mask[sl, :T], cfg.eps_low,
                                      cfg.eps_high, cfg.beta, None if ref_logp is None else ref_logp[sl, :T],
                                      cfg.kl_estimator, cfg.loss_norm, cfg.max_new_tokens)
            # micro-batches add up to the loss over the whole batch under each normalisation; the MoE
            # balance loss (a mean over sequences) is weighted by the micro-batch's share of the rows
            row_share = inputs[sl].size(0) / n_rows
            share = sum(row_tokens[sl]) / max(n_tokens, 1) if cfg.loss_norm == "token" else row_share
            (loss * share + out.losses["aux"] * row_share).backward()
            pass_loss = pass_loss + loss.detach() * share
            micro_stats.append(stats)
        if world > 1:  # sum the ranks' shares of the gradient (DDP's all-reduce, written out)
            for p in model.parameters():
                dist.all_reduce(p.grad)
            sync_moe_load(model, world)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        # the pass's read-backs, both needed before the optimizer steps (the second waits for nothing)
        objective += float(pass_loss) / cfg.mu
        grad_norm = grad_norm.item()
        total = all_ranks_sum(objective, world, device)  # the same on every rank, so all stop or none
        if not (math.isfinite(total) and math.isfinite(grad_norm)):  # before the optimizer writes NaN weights
            raise FloatingPointError(f"GRPO step {step + 1}: loss {total}, grad norm {grad_norm} (not finite); "
                                     f"nothing of this step was applied or saved. Lower lr (now {cfg.lr:.3g}).")
        optimizer.step()
        if cfg.moe_bias_update:
            model.update_moe_biases()
        else:
            for moe in model.moe_layers():
                moe.load.zero_()
    out = read_stats(micro_stats, adv.device) if micro_stats else \
        {"clip_frac": 0.0, "kl": 0.0, "ratio": 1.0, "ratio_min": 1.0, "ratio_max": 1.0}
    out["entropy"] = float(entropy_sum) / rank_tokens if rank_tokens else 0.0
    if world > 1:  # the batch's statistics, not one rank's
        out = {k: all_ranks_sum(v, world, device, "min" if k == "ratio_min" else "max" if k == "ratio_max" else "sum")
               / (1 if k in ("ratio_min", "ratio_max") else world) for k, v in out.items()}
    out.update(updated=1, loss=total, grad_norm=grad_norm, train_tokens_per_s=n_tokens * cfg.mu / (time.time() - t1))
    return out


def defines_policy(key):
    """Keys that change what a GRPO run trains: they must match the checkpoint on --resume=true."""
    return key in ("task", "init_from") or key.startswith(("arithmetic.", "countdown.", "gsm8k.", "rewards.")) \
        and key not in ("gsm8k.path", "gsm8k.download")


def train(cfg, on_step=None):
    """Run GRPO as configured; returns the model. Under torchrun each rank samples and learns from its share of
    the prompts; evaluation, logs and checkpoints are rank 0's."""
    cfg.check()
    t_launch = time.time()
    rank, world, device = setup_distributed(cfg)
    master = rank == 0
    if cfg.prompts_per_step % world:
        raise ConfigError(f"config key 'prompts_per_step' ({cfg.prompts_per_step}) must be divisible by the "
                          f"number of processes ({world})")
    torch.manual_seed(cfg.seed)
    if master:
        checkpoint.open_run(cfg.out_dir, cfg.resume, cfg.overwrite, config_to_dict(cfg), defines_policy)
    source = os.path.join(cfg.out_dir, "ckpt.pt") if cfg.resume else cold_start(cfg)
    barrier(world)
    model, tok, ckpt = checkpoint.load_model(source, device)
    cold = ckpt["cold_start"] if cfg.resume else source
    ref_model = None
    if cfg.beta > 0:  # the frozen reference of the KL term is the cold start
        ref_model = checkpoint.load_model(cold, device)[0].eval().requires_grad_(False)
    task = make_tasks(cfg, [cfg.task])[0]
    optimizer = make_optimizer(model, cfg, device)
    step = 0
    metrics_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    sizes = num_params(model.cfg)
    if master:
        report("grpo", device=f"{device} x {world}" if world > 1 else str(device),
               dtype=resolve_dtype(device, cfg.dtype),
               model=f"{sizes['total'] / 1e6:.2f}M parameters ({sizes['active'] / 1e6:.2f}M active), from {cold}",
               batch=f"{cfg.prompts_per_step} prompts x {cfg.group_size} samples of {task.name}, up to "
                     f"{cfg.max_new_tokens} tokens; loss_norm {cfg.loss_norm}, beta {cfg.beta}, mu {cfg.mu}",
               steps=f"{ckpt['step'] if cfg.resume else 0} -> {cfg.steps}",
               outputs=f"{cfg.out_dir}/ckpt.pt, metrics.jsonl, grpo.png")
    evals = {}
    if cfg.resume:
        optimizer.load_state_dict(ckpt["optimizer"])
        step = ckpt["step"]
        checkpoint.set_rng_state(ckpt["rng"])
        if master:
            truncate_log(metrics_path, step)  # rows a killed run wrote after its last checkpoint
    elif master:
        open(metrics_path, "w").close()
        evals, _ = evaluate(model, tok, task, cfg, 0)  # the cold start's held-out numbers
        print(f"cold start: {format_evals(evals)}")
        with open(metrics_path, "a") as f:
            f.write(json.dumps({"step": 0, **evals}) + "\n")
    barrier(world)
    first_evals, start_step, t_start = dict(evals), step, time.time()
    bar = tqdm(total=cfg.steps, initial=step, disable=not (cfg.progress and master), desc="grpo")
    try:
        out_of_time = budget_spent(cfg, t_launch, world, device)
        while step < cfg.steps and not out_of_time:
            for group in optimizer.param_groups:  # linear warmup, then constant
                group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup_steps, 1))
            metrics = grpo_step(cfg, model, ref_model, optimizer, tok, task, step, device, rank, world)
            step += 1
            bar.update(1)
            bar.set_postfix(reward=f"{metrics['reward']:.2f}", len=f"{metrics['length']:.0f}")
            out_of_time = budget_spent(cfg, t_launch, world, device)
            last = step == cfg.steps or out_of_time  # the budget's last step is a final step: save, evaluate
            if master and (step % cfg.save_every == 0 or last):  # saved before evaluating: a crash there loses nothing
                save(cfg, model, optimizer, step, tok, cold)
            if master and (step % cfg.eval_every == 0 or last):
                evals, shown = evaluate(model, tok, task, cfg, step)
                metrics.update(evals)
                bar.write(f"step {step}: reward {metrics['reward']:.3f}, held-out {format_evals(evals)}")
                if cfg.show_completions:  # what the policy writes now (as TRL logs sample completions)
                    bar.write(completions_now(shown))
            if master and (step % cfg.log_every == 0 or "eval/" + task.name + "/acc" in metrics):
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
            barrier(world)
            if on_step is not None:
                on_step(step, metrics)
    except KeyboardInterrupt:
        if master:
            save(cfg, model, optimizer, step, tok, cold)
            bar.write(f"interrupted: saved step {step} to {cfg.out_dir}/ckpt.pt")
        raise
    finally:
        bar.close()
    if not master:
        return model
    trait_keys = list(task_traits(task, ""))
    plot_path = plot_metrics(metrics_path, os.path.join(cfg.out_dir, "grpo.png"),
                             [f"eval/{task.name}/acc", f"eval/{task.name}/len"]
                             + [f"eval/{task.name}/{k}" for k in trait_keys]
                             + ["reward", "accuracy", "length", "truncated", "zero_variance_groups", "kl", "entropy",
                                "clip_frac", "grad_norm", "gen_tokens_per_s"] + trait_keys,
                             title=f"GRPO {cfg.out_dir}")
    stopped = f" (time budget of {cfg.time_budget_min:g} min reached; --resume=true continues)" if out_of_time else ""
    report("grpo done", steps=f"{start_step} -> {step} of {cfg.steps} in {time.time() - t_start:.0f} s "
           f"({time.time() - t_launch:.0f} s with the cold start){stopped}",
           held_out=(f"{format_evals(first_evals)}  ->  " if first_evals else "") + format_evals(evals),
           checkpoint=os.path.join(cfg.out_dir, "ckpt.pt"), plot=plot_path or "(none: matplotlib is not installed)")
    return model


def barrier(world):
    if world > 1:
        dist.barrier()


def evaluate(model, tok, task, cfg, step):
    """In-run evaluation on cfg.eval_split; per-problem outcomes to out_dir/evals/, a few fixed problems' completions
    to out_dir/completions.jsonl and completions.md (the same problems at every evaluation).
    -> (held-out metrics, the outcome rows of those problems)."""
    path = os.path.join(cfg.out_dir, "evals", f"step{step:05d}_{task.name}.jsonl")
    evals = evaluate_tasks(model, tok, [task], cfg, progress=cfg.progress, save_to=path)
    rows = load_outcomes(path)[:cfg.completions_logged]
    log = os.path.join(cfg.out_dir, "completions.jsonl")
    with open(log, "w" if step == 0 else "a") as f:
        for row in rows:
            f.write(json.dumps({"step": step, **row}) + "\n")
    by_problem = {}
    for _, row in read_jsonl(log):
        by_problem.setdefault(row["prompt"], []).append(row)
    lines = [f"# Completions across GRPO steps ({cfg.out_dir})", "",
             f"The first of {cfg.eval_samples} samples (T={cfg.eval_temperature}) on the same {len(by_problem)} "
             f"{cfg.eval_split} problems at every evaluation.", ""]
    for prompt, seen in by_problem.items():
        lines += [f"## {prompt}", ""]
        for row in seen:
            lines += [f"**step {row['step']}** ({row['correct']}/{row['n']} correct, {row['length']:.0f} tokens)",
                      "", "```", row["completion"], "```", ""]
    with open(os.path.join(cfg.out_dir, "completions.md"), "w") as f:
        f.write("\n".join(lines))
    return evals, rows


def completions_now(rows, n=2):
    """The completions of the first n logged problems, one line each (shortened), for the console."""
    lines = []
    for row in rows[:n]:
        text = row["completion"].replace("\n", " | ")
        text = text if len(text) <= 160 else text[:100] + " ... " + text[-55:]
        lines.append(f"  {row['prompt'][:60]} -> {text} [{row['correct']}/{row['n']} correct]")
    return "\n".join(lines)


def save(cfg, model, optimizer, step, tok, cold):
    checkpoint.save(os.path.join(cfg.out_dir, "ckpt.pt"), model=model.state_dict(), optimizer=optimizer.state_dict(),
                    step=step, rng=checkpoint.rng_state(), config=config_to_dict(cfg),
                    model_config=config_to_dict(model.cfg), tokenizer=checkpoint.tokenizer_to_dict(tok),
                    cold_start=cold, kind="grpo")


if __name__ == "__main__":
    main(GRPOConfig, train, __doc__)
