"""GSM8K (Cobbe et al. 2021): grade-school word problems, the official jsonl release.

Each line is {"question": ..., "answer": ...}; the answer is a worked solution with calculator annotations
like <<48/2=24>> whose last line is "#### 72". The SFT target puts the worked solution (annotations removed
unless keep_calculator) inside <think> and the final number inside <answer>. Answers are compared as exact
fractions after normalising commas, "$" and a trailing ".0".
"""
import dataclasses
import os
import random
import re
import urllib.request

from nanor1.jsonl import read_jsonl
from nanor1.tasks.splits import split_by_hash
from nanor1.tasks.verify import Rewards, VerifyError, number_vote, parse_number, score

URL = "https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/{split}.jsonl"
_FINAL_RE = re.compile(r"#### (\-?[0-9\.\,]+)\s*$")  # the official extraction regex, anchored at the end
_CALC_RE = re.compile(r"<<[^<>]*>>")


@dataclasses.dataclass
class GSM8KConfig:
    path: str = "../shared/data/gsm8k"  # folder with train.jsonl and test.jsonl
    download: bool = False  # fetch the official files into `path` when they are missing
    keep_calculator: bool = False  # keep the <<a*b=c>> annotations in SFT targets


def final_answer(solution, where="answer"):
    """The number after '#### ' on the last line of an official solution, as a Fraction."""
    m = _FINAL_RE.search(solution.strip())
    if m is None:
        raise ValueError(f"{where}: no final '#### <number>' line")
    try:
        return parse_number(m.group(1))
    except VerifyError as e:
        raise ValueError(f"{where}: bad final answer {m.group(1)!r} ({e})") from None


def load(path, split, download=False):
    """Load `split` ('train' or 'test') from the folder `path` -> list of problem dicts."""
    file = os.path.join(path, f"{split}.jsonl")
    if not os.path.exists(file):
        if not download:
            raise FileNotFoundError(f"GSM8K file not found: {file} (set gsm8k.path, or gsm8k.download=True)")
        os.makedirs(path, exist_ok=True)
        urllib.request.urlretrieve(URL.format(split=split), file + ".part")
        os.replace(file + ".part", file)
    problems = []
    for where, row in read_jsonl(file):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            raise ValueError(f"{where}: expected string fields 'question' and 'answer'")
        problems.append({"id": f"{split}-{where.rsplit(':', 1)[1]}", "question": row["question"],
                         "solution": row["answer"], "answer": final_answer(row["answer"], where)})
    if not problems:
        raise ValueError(f"{file}: no problems in the file (expected one JSON object a line)")
    return problems


def _format_answer(value):
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


class GSM8K:
    name = "gsm8k"

    def __init__(self, cfg=None, rewards=None):
        self.cfg = cfg or GSM8KConfig()
        self.rewards = rewards or Rewards()
        self._cache = {}

    def all(self, split):
        """'test': the official test set; 'val': a fixed 5% of the official train set (by a hash of the question),
        for tuning; 'train': the rest of it."""
        if split not in self._cache:
            if split == "test":
                self._cache[split] = load(self.cfg.path, "test", self.cfg.download)
            elif split in ("train", "val"):
                self._cache["val"], self._cache["train"] = [], []
                for row in load(self.cfg.path, "train", self.cfg.download):
                    self._cache[split_by_hash(row["question"], 0.0, 0.05)].append(row)
            else:
                raise ValueError(f"gsm8k: split must be train, val or test, got {split!r}")
        return self._cache[split]

    def problems(self, split, n, seed):
        """n problems of the split, drawn without replacement (the whole split in a seeded order if n >= size)."""
        rows = list(self.all(split))
        random.Random(f"gsm8k-{split}-{seed}").shuffle(rows)
        return rows[:n]

    def prompt(self, problem):
        return problem["question"]

    def sft_target(self, problem, rng=None):
        work = problem["solution"].rsplit("####", 1)[0].strip()
        if not self.cfg.keep_calculator:
            work = _CALC_RE.sub("", work)
        return f"<think>{work}</think><answer>{_format_answer(problem['answer'])}</answer>"

    def vote_key(self, answer):
        """Majority voting pools answers by this key (self-consistency, Wang et al. 2022)."""
        return number_vote(answer)

    def score(self, problem, completion):
        return score(completion, lambda ans: parse_number(ans) == problem["answer"], self.rewards)
