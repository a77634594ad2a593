"""Rejection sampling and expert iteration: DeepSeek-R1's step-4 data pipeline at toy scale.

One round (run R of them: expert iteration / STaR / RAFT):
    collect prompts -> dedup prompts -> generate N samples each -> select prompts (difficulty, length)
    -> filter samples (rule-based, verify-based, model-based), each filter named and counted
    -> keep the best (or up to k correct) per prompt -> dedup responses -> write JSONL with provenance
    -> fine-tune on it (nanor1.sft with data_file) -> evaluate pass@1 / pass@N on the held-out split.
Entry point: `python -m nanor1.rejection CONFIG.py [--key=value ...]` (see configs/rejection_arithmetic.py).
"""
import collections
import dataclasses
import json
import os
import re
import zlib

import torch
import torch.nn as nn

from nanor1 import checkpoint
from nanor1.cli import main
from nanor1.config import ConfigError, config_to_dict
from nanor1.device import autocast, pick_device
from nanor1.evaluate import complete, majority_answer, summarize, vote_of
from nanor1.plotting import plot_metrics
from nanor1.sft import SFTConfig, train as train_sft
from nanor1.tasks import make_tasks
from nanor1.tasks.verify import VerifyError, evaluate, parse_response

# ------------------------------------------------------------------------------------------------- dedup


def normalise(text):
    """For exact dedup: lower case, one space between words, no surrounding space."""
    return re.sub(r"\s+", " ", text.lower()).strip()


def shingles(text, n=3):
    """The set of word n-grams of a text (character n-grams for texts shorter than n words)."""
    words = normalise(text).split(" ")
    if len(words) < n:
        t = normalise(text)
        return {t[i:i + n] for i in range(max(1, len(t) - n + 1))}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a, b):
    return len(a & b) / max(1, len(a | b))


def minhash(shingle_set, n_hashes=64):
    """MinHash signature (Broder 1997): for each of n seeded hashes, the minimum over the set."""
    return tuple(min(zlib.crc32(f"{seed}:{s}".encode()) for s in shingle_set) for seed in range(n_hashes))


def dedup(texts, threshold=0.8, n_hashes=64, bands=16):
    """Indices of the texts to keep: the first of every group of exact (after normalise) or near duplicates
    (Jaccard of word 3-gram shingles >= threshold). Candidate pairs come from MinHash LSH (bands of rows),
    then the exact Jaccard decides. -> (kept indices, {"exact": removed, "near": removed})."""
    seen, kept, removed = set(), [], {"exact": 0, "near": 0}
    buckets = collections.defaultdict(list)  # (band, band signature) -> kept indices
    sets = {}
    rows = n_hashes // bands
    for i, text in enumerate(texts):
        key = normalise(text)
        if key in seen:
            removed["exact"] += 1
            continue
        seen.add(key)
        sets[i] = shingles(text)
        sig = minhash(sets[i], n_hashes)
        band_keys = [(b, sig[b * rows:(b + 1) * rows]) for b in range(bands)]
        candidates = {j for bk in band_keys for j in buckets[bk]}
        if any(jaccard(sets[i], sets[j]) >= threshold for j in candidates):
            removed["near"] += 1
            continue
        kept.append(i)
        for bk in band_keys:
            buckets[bk].append(i)
    return kept, removed


def embedding_dedup(vectors, threshold=0.95):
    """Near-duplicates by cosine similarity of embeddings (N, D), e.g. the model's mean hidden state.
    -> indices kept (the first of every group)."""
    v = torch.nn.functional.normalize(vectors.float(), dim=-1)
    kept = []
    for i in range(v.size(0)):
        if not kept or (v[kept] @ v[i]).max() < threshold:
            kept.append(i)
    return kept


# ------------------------------------------------------------------------------------------------ filters
# Each filter: (sample dict, problem) -> bool (keep). A sample dict has text, ids, score, finished.

def rule_format(sample, problem, cfg):
    return parse_response(sample["text"]) is not None


def rule_length(sample, problem, cfg):
    return cfg.min_tokens <= len(sample["ids"]) <= cfg.max_tokens and sample["finished"]


def rule_repetition(sample, problem, cfg):
    """Reject degenerate loops: at most max_repeat_frac of the word 4-grams may repeat an earlier one
    (a loop of any period repeats nearly all of them; ordinary text almost none)."""
    words = sample["text"].split()
    grams = [" ".join(words[i:i + 4]) for i in range(len(words) - 3)]
    if len(grams) < 8:
        return True
    return 1 - len(set(grams)) / len(grams) <= cfg.max_repeat_frac


def rule_charset(sample, problem, cfg):
    """ASCII printable only (R1 filtered mixed languages; our tasks are ASCII)."""
    return all(32 <= ord(c) < 127 or c in "\n\t" for c in sample["text"])


_EQUATION_RE = re.compile(r"(?<![0-9+\-*/])([0-9][0-9+\-*/]*)=(-?[0-9]+)")


def rule_equations(sample, problem, cfg):
    """A process check for arithmetic and Countdown chains: every 'a op b ... = c' in the reasoning is true
    (the outcome verifier alone keeps right answers reached through wrong steps)."""
    parsed = parse_response(sample["text"])
    if parsed is None:
        return False
    for lhs, rhs in _EQUATION_RE.findall(parsed[0]):
        try:
            value, _ = evaluate(lhs)
        except VerifyError:
            return False
        if value != int(rhs):
            return False
    return True


def verify(sample, problem, cfg):
    return sample["score"].correct


FILTERS = {"format": rule_format, "length": rule_length, "repetition": rule_repetition, "charset": rule_charset,
           "equations": rule_equations, "verify": verify}


def majority_vote(samples):
    """Model-based filter without a verifier: keep the samples that agree with the most common answer."""
    top = majority_answer(samples)
    return [s for s in samples if top is not None and s["score"].answer is not None and vote_of(s) == top]


# ------------------------------------------------------------------------ outcome reward model (value head)

class OutcomeRewardModel(nn.Module):
    """A small value head on the GPT's mean final hidden state, trained to predict the verifier's label
    (an outcome reward model, as in Cobbe et al. 2021's verifiers); it ranks best-of-N where no verifier applies."""

    def __init__(self, dim):
        super().__init__()
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1))

    def forward(self, features):  # (N, D) -> (N,) logits of P(correct)
        return self.head(features).squeeze(-1)


@torch.no_grad()
def sequence_features(model, tok, prompt_texts, responses, batch_size=64):
    """Mean final hidden state over each response's tokens: (N, D). Also the embedding for embedding_dedup."""
    device = next(model.parameters()).device
    feats = []
    model.eval()
    for i in range(0, len(responses), batch_size):
        rows = [tok.render_prompt(p) + r for p, r in zip(prompt_texts[i:i + batch_size], responses[i:i + batch_size])]
        starts = [len(tok.render_prompt(p)) for p in prompt_texts[i:i + batch_size]]
        T = max(map(len, rows))
        idx = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), T)
        for b, (row, s) in enumerate(zip(rows, starts)):
            idx[b, :len(row)] = torch.tensor(row)
            mask[b, s:len(row)] = 1
        hidden = model(idx.to(device)).hidden.float().cpu()  # (B, T, D)
        feats.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))
    return torch.cat(feats)


def train_orm(features, labels, steps=300, lr=1e-2, seed=0):
    """Fit the value head on (features, 0/1 verifier labels) with binary cross-entropy."""
    torch.manual_seed(seed)
    orm = OutcomeRewardModel(features.size(1))
    opt = torch.optim.Adam(orm.parameters(), lr=lr)
    labels = labels.float()
    for _ in range(steps):
        loss = nn.functional.binary_cross_entropy_with_logits(orm(features), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return orm


# ------------------------------------------------------------------------------------------------- a round

@dataclasses.dataclass
class RejectionConfig:
    out_dir: str = "out/rejection"  # where rounds, metrics.jsonl and rejection.png go
    init_from: str = ""  # the SFT checkpoint to start from; "" = sft.out_dir, trained first when missing
    sft: SFTConfig = dataclasses.field(default_factory=SFTConfig)  # the start, and the fine-tune settings
    rounds: int = 3  # expert-iteration rounds
    tasks: tuple[str, ...] = ("arithmetic",)  # tasks to collect prompts from
    prompts_per_round: int = 512  # prompts collected per round
    n_samples: int = 8  # N of best-of-N
    temperature: float = 1.0  # sampling temperature
    max_new_tokens: int = 96  # longest response
    # selection
    drop_always_solved: bool = True  # the current model's pass rate (over the N samples) is 1
    drop_never_solved: bool = True  # ... is 0 (nothing correct to keep anyway)
    max_prompt_tokens: int = 200  # longer prompts are dropped
    # filters
    filters: tuple[str, ...] = ("format", "length", "repetition", "charset", "verify")  # + "majority"
    min_tokens: int = 4  # length filter: fewest response tokens
    max_tokens: int = 512  # length filter: most response tokens
    max_repeat_frac: float = 0.6  # share of repeated word 4-grams; long real search traces stay under it
    keep_per_prompt: int = 1  # up to k correct responses per prompt (1 = best-of-N)
    rank_by: str = "orm"  # how to choose among survivors: 'orm' (value head), 'shortest', 'first'
    dedup_threshold: float = 0.8  # Jaccard similarity above which prompts/responses are near-duplicates
    # fine-tuning on the kept data each round
    finetune_steps: int = 300  # SFT steps on each round's data
    finetune_lr: float = 1e-3  # learning rate of each round's fine-tune
    eval_problems: int = 200  # held-out problems per task
    seed: int = 0  # prompt draws and sampling


def select_by_difficulty(problems, results, cfg, counts, name):
    """Keep prompts the current model sometimes but not always solves (pass rate over the N samples)."""
    selected = []
    for problem, samples in zip(problems, results):
        rate = sum(s["score"].correct for s in samples) / len(samples)
        if cfg.drop_always_solved and rate == 1.0:
            counts[f"{name}/dropped_always_solved"] += 1
        elif cfg.drop_never_solved and rate == 0.0:
            counts[f"{name}/dropped_never_solved"] += 1
        else:
            selected.append((problem, samples))
    return selected


def apply_filters(selected, cfg, counts, name):
    """Run the named filters in order over every prompt's samples, counting what each removes."""
    out = []
    for problem, samples in selected:
        for f in cfg.filters:
            if f == "majority":  # judged against the other samples of the prompt, not alone
                kept = majority_vote(samples)
            else:
                kept = [s for s in samples if FILTERS[f](s, problem, cfg)]
            counts[f"{name}/filter_{f}_removed"] += len(samples) - len(kept)
            samples = kept
        out.append((problem, samples))
    return out


def rank_with_orm(model, tok, task, selected):
    """Train the value head on every sample of this round (verifier labels), then score each sample."""
    pairs = [(p, s) for p, ss in selected for s in ss]
    feats = sequence_features(model, tok, [task.prompt(p) for p, _ in pairs], [s["ids"] for _, s in pairs])
    labels = torch.tensor([s["score"].correct for _, s in pairs])
    if not 0 < int(labels.sum()) < len(labels):
        return  # one class only: nothing to learn, keep the order
    orm = train_orm(feats, labels)
    with torch.no_grad():
        probs = torch.sigmoid(orm(feats))
    for (_, s), prob in zip(pairs, probs.tolist()):
        s["orm"] = prob


def run_round(cfg, round_idx, model, tok, tasks):
    """Collect, filter and keep one round's data -> path of the JSONL written, counts."""
    counts = collections.Counter()
    records, prompts_total = [], 0
    for task in tasks:
        name = task.name
        problems = task.problems("train", cfg.prompts_per_round // len(tasks), cfg.seed * 1000 + round_idx)
        kept_idx, removed = dedup([task.prompt(p) for p in problems], cfg.dedup_threshold)
        counts[f"{name}/prompts"] = len(problems)
        counts[f"{name}/prompt_dedup_exact"], counts[f"{name}/prompt_dedup_near"] = removed["exact"], removed["near"]
        problems = [problems[i] for i in kept_idx
                    if len(tok.render_prompt(task.prompt(problems[i]))) <= cfg.max_prompt_tokens]
        with precision(model, cfg):
            results = complete(model, tok, task, problems, n=cfg.n_samples, temperature=cfg.temperature,
                               max_new_tokens=cfg.max_new_tokens, batch_size=256, seed=cfg.seed + round_idx)
        for samples in results:
            for j, sample in enumerate(samples):
                sample["index"] = j  # provenance
        prompts_total += len(problems)
        counts[f"{name}/samples"] = sum(map(len, results))
        selected = select_by_difficulty(problems, results, cfg, counts, name)
        if cfg.rank_by == "orm":
            rank_with_orm(model, tok, task, selected)
        for problem, samples in apply_filters(selected, cfg, counts, name):
            if cfg.rank_by == "orm":
                samples = sorted(samples, key=lambda s: -s.get("orm", 0.0))
            elif cfg.rank_by == "shortest":
                samples = sorted(samples, key=lambda s: len(s["ids"]))
            keep_idx, removed = dedup([s["text"] for s in samples], cfg.dedup_threshold)  # distinct only
            counts[f"{name}/response_dedup_removed"] += sum(removed.values())
            for s in (samples[k] for k in keep_idx[:cfg.keep_per_prompt]):
                records.append({"prompt": task.prompt(problem), "response": s["text"], "task": name,
                                "prompt_id": str(problem["id"]), "round": round_idx, "sample_index": s["index"],
                                "reward": s["score"].reward, "correct": s["score"].correct,
                                "orm": s.get("orm"), "length": len(s["ids"])})
    path = os.path.join(cfg.out_dir, f"round{round_idx}.jsonl")
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    counts["kept"] = len(records)
    counts["kept_fraction_of_prompts"] = len(records) / max(1, prompts_total)
    return path, dict(counts)


def precision(model, cfg):
    """Sampling runs in the precision the fine-tunes train in (cfg.sft.dtype: bf16 autocast on CUDA by default)."""
    return autocast(next(model.parameters()).device, cfg.sft.dtype)


def evaluate_heldout(model, tok, tasks, cfg):
    out = {}
    for task in tasks:
        problems = task.problems("test", cfg.eval_problems, 1234)
        with precision(model, cfg):
            s = summarize(complete(model, tok, task, problems, n=cfg.n_samples, temperature=cfg.temperature,
                                   max_new_tokens=cfg.max_new_tokens, batch_size=256, seed=99),
                          ks=(1, cfg.n_samples))
            greedy = summarize(complete(model, tok, task, problems, n=1, temperature=0.0,
                                        max_new_tokens=cfg.max_new_tokens, batch_size=256))
        out.update({f"{task.name}/greedy_acc": greedy["pass@1"], f"{task.name}/pass@1": s["pass@1"],
                    f"{task.name}/pass@{cfg.n_samples}": s[f"pass@{cfg.n_samples}"],
                    f"{task.name}/majority": s["majority"], f"{task.name}/length": s["mean_length"]})
    return out


def run(cfg):
    unknown = [f for f in cfg.filters if f not in FILTERS and f != "majority"]
    if unknown or cfg.rank_by not in ("orm", "shortest", "first"):
        raise ConfigError(f"config key 'filters' knows {sorted(FILTERS) + ['majority']} and 'rank_by' knows "
                          f"orm/shortest/first; got filters {unknown} rank_by {cfg.rank_by!r}")
    os.makedirs(cfg.out_dir, exist_ok=True)
    start = cfg.init_from or os.path.join(cfg.sft.out_dir, "ckpt.pt")
    if not cfg.init_from and not os.path.exists(start):
        train_sft(cfg.sft)
    model, tok, _ = checkpoint.load_model(start, pick_device(cfg.sft.device))
    tasks = make_tasks(cfg.sft, list(cfg.tasks))
    log_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    with open(log_path, "w") as f:
        f.write(json.dumps({"step": 0, **evaluate_heldout(model, tok, tasks, cfg)}) + "\n")
    current = start
    for r in range(1, cfg.rounds + 1):
        data, counts = run_round(cfg, r, model, tok, tasks)
        out_dir = os.path.join(cfg.out_dir, f"round{r}")
        ft = dataclasses.replace(cfg.sft, out_dir=out_dir, init_from=current, data_file=data, resume=False,
                                 overwrite=True, max_steps=cfg.finetune_steps, lr=cfg.finetune_lr, warmup_steps=10,
                                 eval_every=0, eval_problems=min(cfg.sft.eval_problems, 50), seed=cfg.seed + r)
        model = train_sft(ft)
        current = os.path.join(out_dir, "ckpt.pt")
        row = {"step": r, **counts, **evaluate_heldout(model, tok, tasks, cfg)}
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    keys = [k for t in cfg.tasks for k in (f"{t}/greedy_acc", f"{t}/pass@1", f"{t}/pass@{cfg.n_samples}",
                                             f"{t}/length")] + ["kept_fraction_of_prompts"]
    plot_metrics(log_path, os.path.join(cfg.out_dir, "rejection.png"), keys, title="rejection sampling rounds")
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
        json.dump(config_to_dict(cfg), f, indent=1)
    return model


if __name__ == "__main__":
    main(RejectionConfig, run, __doc__)
