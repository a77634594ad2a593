"""Rejection sampling and expert iteration: DeepSeek-R1's step-4 data pipeline at toy scale.

One round (run R of them: expert iteration / STaR / RAFT):
    collect prompts -> dedup prompts -> generate N samples each -> select prompts (difficulty, length)
    -> filter samples (rule-based, verify-based, model-based), each filter named and counted
    -> keep the best (or up to k correct) per prompt -> dedup responses -> write JSONL with provenance
    -> fine-tune on it (nanor1.sft with data_file) -> evaluate pass@1 / pass@N on the held-out split.
Entry point: `python -m nanor1.rejection CONFIG.py [--key=value ...]` (see configs/rejection_arithmetic.py).
"""
import collections
import copy
import dataclasses
import json
import os
import random
import re
import zlib

import torch

from nanor1 import checkpoint
from nanor1.cli import main
from nanor1.config import ConfigError, config_to_dict
from nanor1.device import autocast, pick_device
from nanor1.evaluate import complete, majority_answer, summarize, vote_of
from nanor1.judges import (filter_report, judge_pairs, judge_scores, orm_scores,  # noqa: F401
                           sequence_features, train_orm)
from nanor1.jsonl import read_jsonl
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


def canonical(text, mode="sorted"):
    """A prompt's form for dedup and decontamination. 'sorted': its numbers sorted in place, so "7 + 4" and
    "4 + 7", or Countdown's "13 from 4 4 8 3" and "13 from 3 8 4 4", are one prompt (templated prompts differ
    in numbers only, so word shingles alone rarely match); 'masked': every number replaced by '#' (all prompts
    of one template become one: only for showing how much a template dominates); 'none': the text as it is."""
    if mode == "none":
        return text
    if mode == "masked":
        return re.sub(r"\d+", "#", text)
    numbers = iter(sorted(re.findall(r"\d+", text), key=int))
    return re.sub(r"\d+", lambda m: next(numbers), text)


def decontaminate(texts, eval_texts, mode="sorted"):
    """Indices of the texts whose canonical form is not that of any evaluation prompt (the n-gram overlap
    check of GPT-3 and R1, on our short templated prompts: the whole canonical prompt). -> kept indices."""
    banned = {normalise(canonical(t, mode)) for t in eval_texts}
    return [i for i, t in enumerate(texts) if normalise(canonical(t, mode)) not in banned]


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


def orm_filter(sample, problem, cfg):
    """Model-based: the outcome reward model's P(correct) >= 0.5 (scored by score_samples)."""
    return sample["orm"] >= 0.5


def judge_filter(sample, problem, cfg):
    """Model-based: the generative judge's P(correct) >= 0.5 (scored by score_samples)."""
    return sample["judge"] >= 0.5


RULES = ("format", "length", "repetition", "charset", "equations")
FILTERS = {"format": rule_format, "length": rule_length, "repetition": rule_repetition, "charset": rule_charset,
           "equations": rule_equations, "orm": orm_filter, "judge": judge_filter, "verify": verify}


def majority_vote(samples):
    """Model-based filter without a verifier: keep the samples that agree with the most common answer."""
    top = majority_answer(samples)
    return [s for s in samples if top is not None and s["score"].answer is not None and vote_of(s) == top]


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
    filters: tuple[str, ...] = ("format", "length", "repetition", "charset", "equations", "verify")  # + "majority"
    min_tokens: int = 4  # length filter: fewest response tokens
    max_tokens: int = 512  # length filter: most response tokens
    max_repeat_frac: float = 0.6  # share of repeated word 4-grams; long real search traces stay under it
    keep_per_prompt: int = 1  # up to k correct responses per prompt (1 = best-of-N)
    rank_by: str = "orm"  # how to choose among survivors: 'orm' (value head), 'shortest', 'first'
    # the model-based judges, trained once on the start model's labelled samples of label_prompts train prompts
    label_prompts: int = 256  # train prompts (x n_samples) whose verifier labels train the ORM and the judge
    judge_steps: int = 0  # SFT steps fine-tuning the generative judge ("judge" filter); 0 = no judge
    report_prompts: int = 100  # val prompts (x n_samples) on which every filter is scored against the verifier
    dedup_threshold: float = 0.8  # Jaccard similarity above which prompts/responses are near-duplicates
    prompt_canonical: str = "sorted"  # prompts are deduplicated and decontaminated on this form: 'sorted'
    #   (numbers sorted in place: commutative twins and reordered numbers match), 'masked' (numbers -> #), 'none'
    embedding_dedup: float = 0.0  # also drop prompts whose embedding (the model's mean hidden state over the
    #   prompt) has cosine >= this with a kept one; 0 = off
    decontaminate: bool = True  # drop collected prompts whose canonical form is an evaluation prompt's (val, test)
    # fine-tuning on the kept data each round
    finetune_steps: int = 300  # SFT steps on each round's data
    finetune_lr: float = 1e-3  # learning rate of each round's fine-tune
    accumulate: bool = True  # each round's fine-tune sees the kept data of every round so far (False: its own)
    sft_mix: float = 0.0  # share of each fine-tune's data drawn fresh from the original SFT data (R1 mixes
    #   reasoning data with the earlier SFT data); 0.2 = one original example for every four kept ones
    eval_problems: int = 200  # held-out problems per task
    eval_split: str = "val"  # where the per-round evaluation looks ('test' is for reporting: sample.py)
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


def score_samples(judges, tok, task, pairs):
    """Give each (problem, sample) pair the model-based scores: sample['orm'] and sample['judge'] (P(correct)),
    for the judges that exist. The ORM reads features of the frozen start model it was trained on."""
    if not pairs:
        return
    prompts = [task.prompt(p) for p, _ in pairs]
    if judges.get("orm") is not None:
        feats = sequence_features(judges["scorer"], tok, prompts, [s["ids"] for _, s in pairs])
        for (_, s), prob in zip(pairs, orm_scores(judges["orm"], feats)):
            s["orm"] = prob
    if judges.get("judge") is not None:
        for (_, s), prob in zip(pairs, judge_scores(judges["judge"], tok, prompts, [s["text"] for _, s in pairs])):
            s["judge"] = prob


def labelled_samples(cfg, model, tok, tasks, split, n_prompts, seed):
    """The model's n_samples responses to n_prompts problems of a split, with the verifier's labels.
    -> list of (task, problem, sample dict)."""
    out = []
    for task in tasks:
        problems = task.problems(split, n_prompts, seed)
        with precision(model, cfg):
            results = complete(model, tok, task, problems, n=cfg.n_samples, temperature=cfg.temperature,
                               max_new_tokens=cfg.max_new_tokens, batch_size=256, seed=seed)
        out += [(task, p, s) for p, samples in zip(problems, results) for s in samples]
    return out


def train_judges(cfg, model, tok, tasks, start):
    """The ORM (value head) and, with judge_steps > 0, the generative judge, both from the start model's labelled
    samples of label_prompts train prompts. -> {'scorer': frozen start model, 'orm', 'judge'} (None = absent)."""
    pool = labelled_samples(cfg, model, tok, tasks, "train", cfg.label_prompts, cfg.seed + 777)
    labels = [s["score"].correct for _, _, s in pool]
    scorer = copy.deepcopy(model).eval().requires_grad_(False)
    judges = {"scorer": scorer, "orm": None, "judge": None, "label_samples": len(pool),
              "label_correct": sum(labels) / max(len(labels), 1)}
    if 0 < sum(labels) < len(labels):
        feats = sequence_features(scorer, tok, [t.prompt(p) for t, p, _ in pool], [s["ids"] for _, _, s in pool])
        judges["orm"] = train_orm(feats, torch.tensor(labels))
    if cfg.judge_steps > 0:
        if not 0 < sum(labels) < len(labels):
            raise ValueError(f"judge: the start model's {len(labels)} labelled samples are all "
                             f"{'right' if sum(labels) else 'wrong'}: nothing to learn (raise label_prompts)")
        rows = judge_pairs([t.prompt(p) for t, p, _ in pool], [s["text"] for _, _, s in pool], labels)
        path = os.path.join(cfg.out_dir, "judge_train.jsonl")
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        ft = dataclasses.replace(cfg.sft, out_dir=os.path.join(cfg.out_dir, "judge"), init_from=start, data_file=path,
                                 resume=False, overwrite=True, max_steps=cfg.judge_steps, lr=cfg.finetune_lr,
                                 warmup_steps=10, eval_every=0, seed=cfg.seed + 555,
                                 max_len=model.cfg.max_seq_len - 1)  # question + response + verdict
        judges["judge"] = train_sft(ft).eval()
        judges["judge_examples"] = len(rows)
    return judges


def report_filters(cfg, model, tok, tasks, judges):
    """Every filter scored on held-out labelled responses (report_prompts val prompts x n_samples), against the
    verifier: rules (all rule filters together), ORM, judge, majority vote, the verifier itself. -> rows."""
    pool = labelled_samples(cfg, model, tok, tasks, "val", cfg.report_prompts, cfg.seed + 888)
    for task in tasks:
        score_samples(judges, tok, task, [(p, s) for t, p, s in pool if t is task])
    labels = [s["score"].correct for _, _, s in pool]
    agree = set()
    for task in tasks:  # majority vote within each prompt's samples
        by_prompt = collections.defaultdict(list)
        for t, p, s in pool:
            if t is task:
                by_prompt[str(p["id"])].append(s)
        agree |= {id(s) for samples in by_prompt.values() for s in majority_vote(samples)}
    scores = {"rules": [float(all(FILTERS[f](s, p, cfg) for f in RULES)) for _, p, s in pool]}
    if judges.get("orm") is not None:
        scores["orm"] = [s["orm"] for _, _, s in pool]
    if judges.get("judge") is not None:
        scores["judge"] = [s["judge"] for _, _, s in pool]
    scores["majority"] = [float(id(s) in agree) for _, _, s in pool]
    scores["verify"] = [float(y) for y in labels]
    return filter_report(scores, labels), len(pool), sum(labels) / max(len(labels), 1)


def eval_prompts(task, cfg):
    """Every prompt an evaluation may use: the whole val and test splits where the task can list them, else the
    problems evaluate_heldout draws."""
    texts = []
    for split in ("val", "test"):
        universe = task.universe(split) if hasattr(task, "universe") else None
        problems = universe if universe is not None else task.problems(split, cfg.eval_problems, 1234)
        texts += [task.prompt(p) for p in problems]
    return texts


def collect_prompts(cfg, model, tok, task, problems, counts):
    """The prompt stages, each counting what it removed: dedup on the canonical form (exact, then MinHash near
    duplicates), embedding dedup, decontamination against the evaluation sets, the prompt-length rule."""
    name = task.name
    counts[f"{name}/prompts"] = len(problems)
    kept, removed = dedup([canonical(task.prompt(p), cfg.prompt_canonical) for p in problems], cfg.dedup_threshold)
    counts[f"{name}/prompt_dedup_exact"], counts[f"{name}/prompt_dedup_near"] = removed["exact"], removed["near"]
    problems = [problems[i] for i in kept]
    if cfg.embedding_dedup > 0 and problems:
        texts = [task.prompt(p) for p in problems]
        feats = sequence_features(model, tok, texts, [[] for _ in texts], over="prompt")
        kept = embedding_dedup(feats, cfg.embedding_dedup)
        counts[f"{name}/prompt_dedup_embedding"] = len(problems) - len(kept)
        problems = [problems[i] for i in kept]
    if cfg.decontaminate:
        kept = decontaminate([task.prompt(p) for p in problems], eval_prompts(task, cfg), cfg.prompt_canonical)
        counts[f"{name}/prompt_decontaminated"] = len(problems) - len(kept)
        problems = [problems[i] for i in kept]
    short = [p for p in problems if len(tok.render_prompt(task.prompt(p))) <= cfg.max_prompt_tokens]
    counts[f"{name}/prompt_too_long"] = len(problems) - len(short)
    return short


def training_file(cfg, round_idx, tasks):
    """The fine-tune's data for this round: the kept data of every round so far (cfg.accumulate) or this round's,
    plus a cfg.sft_mix share of examples drawn fresh from the original SFT data. -> path, counts."""
    rounds = range(1, round_idx + 1) if cfg.accumulate else [round_idx]
    rows = [row for r in rounds for _, row in read_jsonl(os.path.join(cfg.out_dir, f"round{r}.jsonl"))]
    n_mix = round(len(rows) * cfg.sft_mix / (1 - cfg.sft_mix)) if cfg.sft_mix > 0 else 0
    rng = random.Random(f"{cfg.seed}-mix-{round_idx}")
    for i in range(n_mix):
        task = tasks[i % len(tasks)]
        problem = task.problems("train", 1, rng.randrange(1 << 30))[0]
        rows.append({"prompt": task.prompt(problem), "response": task.sft_target(problem, rng), "task": task.name,
                     "source": "sft"})
    path = os.path.join(cfg.out_dir, f"train{round_idx}.jsonl")
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path, {"finetune_examples": len(rows), "finetune_sft_examples": n_mix}


def run_round(cfg, round_idx, model, tok, tasks, judges):
    """Collect, filter and keep one round's data -> path of the JSONL written, counts."""
    counts = collections.Counter()
    records, prompts_total = [], 0
    for task in tasks:
        name = task.name
        problems = task.problems("train", cfg.prompts_per_round // len(tasks), cfg.seed * 1000 + round_idx)
        problems = collect_prompts(cfg, model, tok, task, problems, counts)
        with precision(model, cfg):
            results = complete(model, tok, task, problems, n=cfg.n_samples, temperature=cfg.temperature,
                               max_new_tokens=cfg.max_new_tokens, batch_size=256, seed=cfg.seed + round_idx)
        for samples in results:
            for j, sample in enumerate(samples):
                sample["index"] = j  # provenance
        prompts_total += len(problems)
        counts[f"{name}/samples"] = sum(map(len, results))
        selected = select_by_difficulty(problems, results, cfg, counts, name)
        score_samples(judges, tok, task, [(p, smp) for p, samples in selected for smp in samples])
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
                                "orm": s.get("orm"), "judge": s.get("judge"), "length": len(s["ids"])})
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
        problems = task.problems(cfg.eval_split, cfg.eval_problems, 1234)
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


def write_filter_report(cfg, rows, n_responses, correct_share):
    """filter_report.json and a markdown table of report_filters' rows, printed too."""
    with open(os.path.join(cfg.out_dir, "filter_report.json"), "w") as f:
        json.dump({"responses": n_responses, "correct_share": correct_share, "filters": rows}, f, indent=1)
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [f"Filters scored against the verifier on {n_responses} held-out responses (val, the start model's "
             f"samples; {correct_share:.1%} correct):", "", "| filter | kept | precision | recall | AUC |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['filter']} | {fmt(r['kept'])} | {fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['auc'])} |"
              for r in rows]
    with open(os.path.join(cfg.out_dir, "filter_report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def run(cfg):
    if cfg.prompt_canonical not in ("sorted", "masked", "none"):
        raise ConfigError(f"config key 'prompt_canonical' must be 'sorted', 'masked' or 'none', "
                          f"got {cfg.prompt_canonical!r}")
    if not 0 <= cfg.sft_mix < 1 or not 0 <= cfg.embedding_dedup <= 1:
        raise ConfigError(f"config keys 'sft_mix' (got {cfg.sft_mix}) must be in [0, 1) and 'embedding_dedup' "
                          f"(got {cfg.embedding_dedup}) in [0, 1]")
    unknown = [f for f in cfg.filters if f not in FILTERS and f != "majority"]
    if unknown or cfg.rank_by not in ("orm", "shortest", "first"):
        raise ConfigError(f"config key 'filters' knows {sorted(FILTERS) + ['majority']} and 'rank_by' knows "
                          f"orm/shortest/first; got filters {unknown} rank_by {cfg.rank_by!r}")
    if "judge" in cfg.filters and cfg.judge_steps <= 0:
        raise ConfigError("config key 'filters' has 'judge' but 'judge_steps' is 0: the judge must be trained")
    os.makedirs(cfg.out_dir, exist_ok=True)
    start = cfg.init_from or os.path.join(cfg.sft.out_dir, "ckpt.pt")
    if not cfg.init_from and not os.path.exists(start):
        train_sft(cfg.sft)
    model, tok, _ = checkpoint.load_model(start, pick_device(cfg.sft.device))
    tasks = make_tasks(cfg.sft, list(cfg.tasks))
    log_path = os.path.join(cfg.out_dir, "metrics.jsonl")
    row = {"step": 0, **evaluate_heldout(model, tok, tasks, cfg)}
    judges = {}
    if cfg.rank_by == "orm" or {"orm", "judge"} & set(cfg.filters) or cfg.report_prompts > 0:
        judges = train_judges(cfg, model, tok, tasks, start)
        row.update({k: v for k, v in judges.items() if k.startswith(("label_", "judge_"))})
    if cfg.report_prompts > 0:
        write_filter_report(cfg, *report_filters(cfg, model, tok, tasks, judges))
    with open(log_path, "w") as f:
        f.write(json.dumps(row) + "\n")
    current = start
    for r in range(1, cfg.rounds + 1):
        _, counts = run_round(cfg, r, model, tok, tasks, judges)
        data, mix_counts = training_file(cfg, r, tasks)
        counts.update(mix_counts)
        out_dir = os.path.join(cfg.out_dir, f"round{r}")
        if counts["finetune_examples"] == 0:  # every sample filtered out, nothing kept before: nothing to learn
            print(f"round {r}: no data kept, the model is not fine-tuned this round")
        else:
            ft = dataclasses.replace(cfg.sft, out_dir=out_dir, init_from=current, data_file=data, resume=False,
                                     overwrite=True, max_steps=cfg.finetune_steps, lr=cfg.finetune_lr,
                                     warmup_steps=10, eval_every=0, eval_problems=min(cfg.sft.eval_problems, 50),
                                     seed=cfg.seed + r)
            model = train_sft(ft)
            current = os.path.join(out_dir, "ckpt.pt")
        row = {"step": r, **counts, **evaluate_heldout(model, tok, tasks, cfg)}
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row))
    keys = [k for t in cfg.tasks for k in (f"{t}/greedy_acc", f"{t}/pass@1", f"{t}/pass@{cfg.n_samples}",
                                             f"{t}/length")] + ["kept_fraction_of_prompts", "finetune_examples"]
    keys += [f"{t}/{stage}" for t in cfg.tasks for stage in  # what every stage removed, round by round
             ("prompt_dedup_exact", "prompt_dedup_near", "prompt_dedup_embedding", "prompt_decontaminated",
              "dropped_always_solved", "dropped_never_solved", *[f"filter_{f}_removed" for f in cfg.filters],
              "response_dedup_removed")]
    plot_metrics(log_path, os.path.join(cfg.out_dir, "rejection.png"), keys, title="rejection sampling rounds")
    with open(os.path.join(cfg.out_dir, "config.json"), "w") as f:
        json.dump(config_to_dict(cfg), f, indent=1)
    return model


if __name__ == "__main__":
    main(RejectionConfig, run, __doc__)
