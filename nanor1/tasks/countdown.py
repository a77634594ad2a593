"""Countdown: reach a target from 3-4 numbers with + - * /, each number used at most once.

Conventions from Stream of Search (Gandhi et al. 2024, arXiv 2404.03683): moves are a+b, a*b, larger-minus-
smaller and exact division; a fixed 10% of target values never appear in train. Problems are generated from
the full set of values the numbers can reach (an exhaustive search), so every problem is solvable.

The SFT target is a depth-first search written out as text, best-looking move first, each state (the
numbers left) explored once:
    <think>25+3=28, left 28 7 2
    28-7=21, left 21 2
    21+2=23, not 24, back
    ...
    28-4=24, found</think><answer>(25+3)-(7-...)</answer>
The search has a patience budget: the dead ends ("not 24, back") it may hit. Out of patience before it finds
the target, the trace ends "give up" and answers its closest value: a wrong guess. Budgets are drawn from a
geometric distribution, so after every dead end the trace gives up with the same probability `give_up`: a
decision a model can learn without counting lines. The cold start therefore gives up at random after a dead
end; GRPO can teach it to keep searching (longer responses, more right answers): the "aha" this project shows.
"""
import collections
import dataclasses
import functools
import itertools
import math
import random
import zlib

from nanor1.tasks.splits import draw_distinct, split_by_hash
from nanor1.tasks.verify import Rewards, VerifyError, evaluate, expression_vote, score


@dataclasses.dataclass
class CountdownConfig:
    n_numbers: tuple[int, ...] = (3, 4)  # each problem draws its count from these
    min_number: int = 1  # smallest number offered
    max_number: int = 50  # largest number offered
    min_target: int = 10  # smallest target
    max_target: int = 100  # largest target
    heldout_frac: float = 0.1  # share of target values never seen in train
    test_frac: float = 0.1  # share of (numbers, target) problems reserved for test
    val_frac: float = 0.05  # share reserved for validation (in-run evaluation, tuning)
    give_up: float = 0.3  # SFT traces give up after each dead end with this probability (geometric budgets)
    max_value: int = 0  # moves whose result exceeds this are not legal (0: no cap); keeps the arithmetic small


def moves(a, b, max_value=0):
    """The legal results of combining a and b: [(value, 'x op y')], larger operand first; no no-op moves,
    no result above max_value (if set)."""
    hi, lo = max(a, b), min(a, b)
    out = [(hi + lo, f"{hi}+{lo}")]
    if lo != 1:
        out.append((hi * lo, f"{hi}*{lo}"))
    if hi != lo:
        out.append((hi - lo, f"{hi}-{lo}"))
    if lo > 1 and hi % lo == 0:
        out.append((hi // lo, f"{hi}/{lo}"))
    return [m for m in out if not max_value or m[0] <= max_value]


def _combine(expr_a, expr_b, a, b, op):
    (ea, eb) = (expr_a, expr_b) if a >= b else (expr_b, expr_a)
    return f"({ea}{op}{eb})"


@functools.lru_cache(maxsize=100_000)
def reachable(nums, max_value=0):
    """Every value reachable from the sorted tuple `nums`, each number used at most once (a full search)."""
    out = set(nums)
    for i in range(len(nums)):
        for j in range(i + 1, len(nums)):
            rest = nums[:i] + nums[i + 1:j] + nums[j + 1:]
            for value, _ in moves(nums[i], nums[j], max_value):
                out |= reachable(tuple(sorted(rest + (value,))), max_value)
    return frozenset(out)


def solve(nums, target, max_value=0):
    """One expression for target (exhaustive search), or None."""
    _, answer, solved = search_trace(nums, target, patience=10 ** 9, max_value=max_value)
    return answer if solved else None


def strip_outer(expr):
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for k, ch in enumerate(expr):
            depth += (ch == "(") - (ch == ")")
            if depth == 0 and k < len(expr) - 1:
                return expr  # the first "(" closes before the end: not an outer pair
        return expr[1:-1]
    return expr


def search_trace(nums, target, patience, max_value=0):
    """Depth-first search written as text; after `patience` dead ends the next one ends it with "give up".
    -> (trace, answer_expression, solved)."""
    lines, budget = [], [patience]
    best = [None]  # (distance, expression) of the closest value written so far
    seen = set()  # states (sorted values) already written: reached again by another move, they are skipped

    def dfs(state):  # state: list of (value, expression)
        candidates = []
        for i in range(len(state)):
            for j in range(i + 1, len(state)):
                (a, ea), (b, eb) = state[i], state[j]
                rest = [s for k, s in enumerate(state) if k not in (i, j)]
                for value, text in moves(a, b, max_value):
                    op = text[len(str(max(a, b)))]
                    candidates.append((abs(value - target), value, text, _combine(ea, eb, a, b, op), rest))
        candidates.sort(key=lambda c: c[0])  # heuristic: closest to the target first (stable, so seeded)
        for distance, value, text, expr, rest in candidates:
            key = tuple(sorted([value] + [v for v, _ in rest]))
            if key in seen:
                continue
            seen.add(key)
            if budget[0] < 0:
                return None
            if best[0] is None or distance < best[0][0]:
                best[0] = (distance, expr)
            line = f"{text}={value}"
            if value == target:
                lines.append(f"{line}, found")
                return expr
            if not rest:
                lines.append(f"{line}, not {target}, back")
                budget[0] -= 1  # a dead end
                continue
            new_state = [(value, expr)] + rest
            lines.append(f"{line}, left " + " ".join(str(v) for v, _ in new_state))
            found = dfs(new_state)
            if found is not None:
                return found
        return None

    found = dfs([(n, str(n)) for n in nums])
    if found is None:
        lines.append("give up")
        found = best[0][1] if best[0] else str(nums[0])
        return "\n".join(lines), strip_outer(found), False
    return "\n".join(lines), strip_outer(found), True


def check_answer(answer, nums, target):
    """True iff `answer` is an expression over a sub-multiset of nums whose exact value is target."""
    value, literals = evaluate(answer)
    if collections.Counter(literals) - collections.Counter(nums):
        raise VerifyError("uses a number not given, or one more times than given")
    return value == target


class Countdown:
    name = "countdown"

    def __init__(self, cfg=None, rewards=None):
        self.cfg = cfg = cfg or CountdownConfig()
        self.rewards = rewards or Rewards()
        if not (cfg.n_numbers and all(2 <= k <= 5 for k in cfg.n_numbers) and 1 <= cfg.min_number <= cfg.max_number
                and cfg.min_target <= cfg.max_target and 0 <= cfg.give_up < 1
                and (not cfg.max_value or cfg.max_value >= cfg.max_target)):
            raise ValueError(f"countdown: bad config {cfg}")
        self._universe = {}
        targets = list(range(cfg.min_target, cfg.max_target + 1))
        n_heldout = round(cfg.heldout_frac * len(targets))
        self.heldout_targets = frozenset(random.Random("countdown-heldout").sample(targets, n_heldout))

    def split_of(self, nums, target):
        """Split on the number multiset and target; held-out target values are always test."""
        if target in self.heldout_targets:
            return "test"
        return split_by_hash(f"{sorted(nums)}{target}", self.cfg.test_frac, self.cfg.val_frac)

    def _targets(self, nums, split):
        reach = reachable(tuple(sorted(nums)), self.cfg.max_value)
        return [t for t in range(self.cfg.min_target, self.cfg.max_target + 1)
                if t in reach and t not in nums and self.split_of(nums, t) == split]

    @staticmethod
    def _problem(nums, target):
        """A problem; its numbers in an order fixed by the problem (prompts do not list them sorted)."""
        nums = sorted(nums)
        random.Random(zlib.crc32(f"{nums}{target}".encode())).shuffle(nums)
        return {"id": f"{' '.join(map(str, sorted(nums)))}->{target}", "nums": nums, "target": target}

    def universe(self, split):
        """Every problem of the split (None when there are too many number multisets to list)."""
        cfg = self.cfg
        span = cfg.max_number - cfg.min_number + 1
        if sum(math.comb(span + k - 1, k) for k in cfg.n_numbers) > 20_000:
            return None
        if split not in self._universe:
            numbers = range(cfg.min_number, cfg.max_number + 1)
            self._universe[split] = [self._problem(list(nums), t) for k in sorted(cfg.n_numbers)
                                     for nums in itertools.combinations_with_replacement(numbers, k)
                                     for t in self._targets(nums, split)]
        return self._universe[split]

    def problems(self, split, n, seed):
        """n distinct problems of `split`, the same for the same seed (see nanor1/tasks/__init__.py)."""
        cfg = self.cfg

        def draw(rng):
            nums = [rng.randint(cfg.min_number, cfg.max_number) for _ in range(rng.choice(cfg.n_numbers))]
            targets = self._targets(nums, split)
            return self._problem(nums, rng.choice(targets)) if targets else None
        return draw_distinct(self.universe(split), draw, n, f"countdown-{split}-{seed}")

    def prompt(self, problem):
        return f"Make {problem['target']} from {' '.join(map(str, problem['nums']))} with + - * /, each number at most once."

    def patience(self, rng):
        """Dead ends an SFT trace may hit: P(k) = (1 - give_up)^k * give_up, so every dead end is a fresh
        give-up decision with probability give_up (a spread of budgets a model can learn without counting)."""
        k = 0
        while rng.random() >= self.cfg.give_up:
            k += 1
        return k

    def sft_target(self, problem, rng):
        trace, answer, _ = search_trace(problem["nums"], problem["target"], self.patience(rng), self.cfg.max_value)
        return f"<think>{trace}</think><answer>{answer}</answer>"

    def traits(self, completion):
        """What GRPO logs about a completion besides its reward: dead ends written, did it give up, did it
        claim to have found the target (a claim the verifier may reject)?"""
        return {"dead_ends": float(completion.count(", back")), "gave_up": float("give up" in completion),
                "claims_found": float(", found</think>" in completion)}

    def vote_key(self, answer):
        """Majority voting pools answers by this key (self-consistency, Wang et al. 2022)."""
        return expression_vote(answer)

    def score(self, problem, completion):
        return score(completion, lambda ans: check_answer(ans, problem["nums"], problem["target"]), self.rewards)
