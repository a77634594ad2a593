"""Evaluation: sample completions for task problems and score them.

pass@k uses the unbiased estimator of Chen et al. 2021 (Codex, eq. 1): 1 - C(n-c, k) / C(n, k) for n samples
of which c are correct. Majority vote (self-consistency, Wang et al. 2022) takes the most common answer among
the n samples by the task's vote key (a number's value, a Countdown expression's value; ties: the first seen)
and scores it.
"""
import collections
import json
import math
import os

import numpy as np

from tqdm import tqdm

from nanor1.device import autocast
from nanor1.engine import generate
from nanor1.jsonl import read_jsonl


def pass_at_k(n, c, k):
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def task_vote(task, answer):
    """The key an answer votes with (task.vote_key: equal values pool), or the answer text itself."""
    if answer is None:
        return None
    return task.vote_key(answer) if hasattr(task, "vote_key") else answer


def task_traits(task, text):
    """The task's own behaviour measures of a completion (Countdown: gave_up, ...), {} if it has none."""
    return task.traits(text) if hasattr(task, "traits") else {}


def complete(model, tok, task, problems, n=1, temperature=0.0, max_new_tokens=128, batch_size=32, seed=0,
             top_k=0, top_p=1.0, speculative=False, progress=False, decode="eager"):
    """-> list (one per problem) of lists of n dicts {text, ids, score, finished}."""
    results = []
    per_batch = max(1, batch_size // n)
    batches = range(0, len(problems), per_batch)
    for i in tqdm(batches, desc=f"sampling {task.name}", disable=not progress, leave=False):
        chunk = problems[i:i + per_batch]
        prompts = [tok.render_prompt(task.prompt(p)) for p in chunk]
        gen = generate(model, prompts, max_new_tokens, n=n, temperature=temperature, top_k=top_k, top_p=top_p,
                       stop_ids=tok.stop_ids, pad_id=tok.pad_id, seed=seed + i, speculative=speculative,
                       decode=decode)
        for j, problem in enumerate(chunk):
            samples = []
            for r in range(j * n, (j + 1) * n):
                text = tok.decode_response(gen.tokens[r])
                score = task.score(problem, text)
                samples.append({"text": text, "ids": gen.tokens[r], "score": score, "finished": gen.finished[r],
                                "vote": task_vote(task, score.answer), "traits": task_traits(task, text)})
            results.append(samples)
    return results


def vote_of(sample):
    return sample.get("vote", sample["score"].answer)


def majority_answer(samples):
    """The most common vote among the samples with a parsed answer (ties: the first seen), or None if none."""
    votes = [vote_of(s) for s in samples if s["score"].answer is not None]
    return collections.Counter(votes).most_common(1)[0][0] if votes else None


def summarize(results, ks=(1,)):
    """pass@k for each k <= n, majority-vote accuracy, mean response length (tokens), truncation rate, and
    the mean of each of the task's traits."""
    n = len(results[0])
    out = {}
    for k in ks:
        if k <= n:
            out[f"pass@{k}"] = sum(pass_at_k(n, sum(s["score"].correct for s in r), k) for r in results) / len(results)
    majority = 0
    for samples in results:
        top = majority_answer(samples)
        if top is not None:
            majority += next(s for s in samples if s["score"].answer is not None and vote_of(s) == top)["score"].correct
    out["majority"] = majority / len(results)
    flat = [s for r in results for s in r]
    out["mean_length"] = sum(len(s["ids"]) for s in flat) / len(flat)
    out["truncated"] = sum(not s["finished"] for s in flat) / len(flat)
    out["format"] = sum(s["score"].answer is not None for s in flat) / len(flat)
    for key in flat[0].get("traits", {}):  # the task's own behaviour measures, e.g. Countdown's gave_up
        out[key] = sum(s["traits"][key] for s in flat) / len(flat)
    return out


def evaluate_tasks(model, tok, tasks, cfg, seed=1234, progress=False, save_to=None):
    """Held-out pass@1 (greedy, or the mean over eval_samples sampled completions) and mean response length
    per task on cfg.eval_split ('val' while training: the test split is for reporting) -> {"eval/<task>/acc": ...,
    "eval/<task>/len": ...}. save_to: a path pattern with {task}: the per-problem outcomes are written there."""
    out = {}
    device = next(model.parameters()).device
    for task in tasks:
        problems = task.problems(cfg.eval_split, cfg.eval_problems, seed)
        if not problems:
            raise ValueError(f"{task.name}: the {cfg.eval_split} split has no problems to evaluate on")
        with autocast(device, cfg.dtype):  # evaluate in the precision the run trains in
            results = complete(model, tok, task, problems, n=cfg.eval_samples, temperature=cfg.eval_temperature,
                               max_new_tokens=cfg.eval_max_new_tokens, batch_size=cfg.eval_batch_size,
                               seed=seed, progress=progress, decode=cfg.decode)
        summary = summarize(results)
        if save_to:
            save_outcomes(save_to.format(task=task.name), outcomes(task, problems, results))
        out[f"eval/{task.name}/acc"] = summary["pass@1"]
        out[f"eval/{task.name}/len"] = summary["mean_length"]
        for key in task_traits(task, ""):  # e.g. Countdown's gave_up: how often the policy gives up
            out[f"eval/{task.name}/{key}"] = summary[key]
    return out


def format_evals(evals):
    """{'eval/countdown/acc': 0.61, 'eval/countdown/len': 38.2, ...} -> 'countdown acc 0.610 len 38.2 ...'."""
    parts = []
    for key, value in evals.items():
        _, task, name = key.split("/", 2)
        if not parts or not parts[-1].startswith(task + " "):
            parts.append(task)
        parts[-1] += f" {name} {value:.3f}" if name != "len" else f" {name} {value:.1f}"
    return "; ".join(parts)


# ------------------------------------------------------------------------------ per-problem outcomes, paired CIs

def outcomes(task, problems, results):
    """One row per problem: id, prompt, samples n, correct count, mean length (tokens), first completion."""
    return [{"id": str(p["id"]), "prompt": task.prompt(p), "n": len(r), "correct": sum(s["score"].correct for s in r),
             "length": sum(len(s["ids"]) for s in r) / len(r), "completion": r[0]["text"]}
            for p, r in zip(problems, results)]


def save_outcomes(path, rows):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def load_outcomes(path):
    rows = []
    for where, row in read_jsonl(path):
        if not all(k in row for k in ("id", "n", "correct", "length")):
            raise ValueError(f"{where}: not a per-problem outcome (needs id, n, correct, length)")
        rows.append(row)
    return rows


def paired_bootstrap(before, after, n_boot=10_000, seed=0, level=0.95):
    """Paired comparison of two evaluations on the same problems (matched by id): for pass@1 (the per-problem share
    of correct samples) and mean length, the mean of each, the mean difference after - before, and a percentile
    bootstrap CI of that difference resampling problems (Efron & Tibshirani 1993). -> dict per metric."""
    b = {r["id"]: r for r in before}
    pairs = [(b[r["id"]], r) for r in after if r["id"] in b]
    if not pairs:
        raise ValueError("the two evaluations share no problem id")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(pairs), size=(n_boot, len(pairs)))
    out = {"problems": len(pairs)}
    for name, value in (("pass@1", lambda r: r["correct"] / r["n"]), ("length", lambda r: r["length"])):
        x = np.array([value(p) for p, _ in pairs])
        y = np.array([value(q) for _, q in pairs])
        boot = (y - x)[idx].mean(1)
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
        out[name] = {"before": x.mean(), "after": y.mean(), "diff": (y - x).mean(), "lo": lo, "hi": hi,
                     "rel": (y.mean() - x.mean()) / x.mean() if x.mean() else float("nan")}
    return out


def comparison_table(cmp, names=("before", "after")):
    """Markdown: the paired bootstrap's numbers for pass@1 and length."""
    lines = [f"| metric ({cmp['problems']} problems, paired) | {names[0]} | {names[1]} | difference | 95% CI | "
             "relative |", "|---|---|---|---|---|---|"]
    for key in ("pass@1", "length"):
        c = cmp[key]
        fmt = ".3f" if key == "pass@1" else ".1f"
        lines.append(f"| {key} | {c['before']:{fmt}} | {c['after']:{fmt}} | {c['diff']:+{fmt}} | "
                     f"[{c['lo']:+{fmt}}, {c['hi']:+{fmt}}] | {c['rel']:+.1%} |")
    return "\n".join(lines)
