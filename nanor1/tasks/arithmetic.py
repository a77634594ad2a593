"""Synthetic arithmetic: a + b, a - b, a * b with a configurable number of digits.

SFT targets come in two styles (the mix is the knob `step_frac`):
  direct:        <think></think><answer>132</answer>
  step-by-step:  <think>7+5=12 carry 1 so 2, 4+8+1=13 carry 1 so 32, so 132</think><answer>132</answer>
Digits are worked least significant first, and each step carries the running result ("so 32"), the new
digit in front of what was written before: every step copies locally, and the answer is a copy of the last
running result, never a read-back in reverse. Subtraction writes borrows the same way; multiplication
writes one partial product per digit of b, then their sum.
The split is by problem: a problem is in test iff a hash of it says so, so train and test never share one.
"""
import dataclasses

from nanor1.tasks.splits import draw_distinct, split_by_hash
from nanor1.tasks.verify import Rewards, number_vote, parse_number, score

OPS = ("+", "-", "*")


@dataclasses.dataclass
class ArithmeticConfig:
    min_digits: int = 1  # fewest digits per operand
    max_digits: int = 2  # most digits per operand
    ops: tuple[str, ...] = OPS  # operators drawn from
    step_frac: float = 0.5  # share of SFT targets written step by step (the rest answer directly)
    test_frac: float = 0.1  # share of all problems reserved for the test split
    val_frac: float = 0.05  # share reserved for validation (in-run evaluation, tuning)


def split_key(a, op, b):
    """The key a problem is split on: for commutative + and * the unordered pair, so "4 + 7" in train never
    leaks "7 + 4" into test."""
    if op in "+*":
        a, b = min(a, b), max(a, b)
    return f"{a}{op}{b}"


class Arithmetic:
    name = "arithmetic"

    def __init__(self, cfg=None, rewards=None):
        self.cfg = cfg or ArithmeticConfig()
        self.rewards = rewards or Rewards()
        self._universe = {}
        bad = [op for op in self.cfg.ops if op not in OPS]
        if bad or not 1 <= self.cfg.min_digits <= self.cfg.max_digits:
            raise ValueError(f"arithmetic: ops must be from {OPS} and 1 <= min_digits <= max_digits, got "
                             f"ops={self.cfg.ops}, digits={self.cfg.min_digits}..{self.cfg.max_digits}")

    def _number(self, rng):
        digits = rng.randint(self.cfg.min_digits, self.cfg.max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)

    def split_of(self, a, op, b):
        return split_by_hash(split_key(a, op, b), self.cfg.test_frac, self.cfg.val_frac)

    @staticmethod
    def _problem(a, op, b):
        answer = a + b if op == "+" else a - b if op == "-" else a * b
        return {"id": f"{a}{op}{b}", "a": a, "b": b, "op": op, "answer": answer}

    def universe(self, split):
        """Every problem of the split (None when the operand range is too large to list)."""
        lo = 0 if self.cfg.min_digits == 1 else 10 ** (self.cfg.min_digits - 1)
        numbers = range(lo, 10 ** self.cfg.max_digits)
        if len(numbers) ** 2 * len(self.cfg.ops) > 1_000_000:
            return None
        if split not in self._universe:
            self._universe[split] = [self._problem(a, op, b) for op in self.cfg.ops for a in numbers for b in numbers
                                     if self.split_of(a, op, b) == split]
        return self._universe[split]

    def problems(self, split, n, seed):
        """n distinct problems of `split`, the same for the same seed (see nanor1/tasks/__init__.py)."""
        def draw(rng):
            a, b, op = self._number(rng), self._number(rng), rng.choice(self.cfg.ops)
            return self._problem(a, op, b) if self.split_of(a, op, b) == split else None
        return draw_distinct(self.universe(split), draw, n, f"arithmetic-{split}-{seed}")

    def prompt(self, problem):
        if "question" in problem:  # a problem given as text (sample.py --problems)
            return problem["question"]
        return f"What is {problem['a']} {problem['op']} {problem['b']}?"

    def sft_target(self, problem, rng):
        steps = self.steps(problem) if rng.random() < self.cfg.step_frac else ""
        return f"<think>{steps}</think><answer>{problem['answer']}</answer>"

    def steps(self, problem):
        a, b, op = problem["a"], problem["b"], problem["op"]
        if op == "+":
            return _add_steps(a, b)
        if op == "-":
            return _sub_steps(a, b) if a >= b else f"{a}<{b} so -({b}-{a}): " + _sub_steps(b, a)
        return _mul_steps(a, b)

    def traits(self, completion):
        """What GRPO logs about a completion besides its reward: does it work step by step?"""
        return {"step_by_step": float(not completion.startswith("<think></think>"))}

    def vote_key(self, answer):
        """Majority voting pools answers by this key (self-consistency, Wang et al. 2022)."""
        return number_vote(answer)

    def score(self, problem, completion):
        return score(completion, lambda ans: parse_number(ans) == problem["answer"], self.rewards)


def _digits(n):  # least significant first
    return [int(d) for d in reversed(str(n))]


def _add_steps(a, b):
    da, db, carry, parts, written = _digits(a), _digits(b), 0, [], ""
    for i in range(max(len(da), len(db))):
        x, y = da[i] if i < len(da) else 0, db[i] if i < len(db) else 0
        s = x + y + carry
        written = str(s % 10) + written
        parts.append(f"{x}+{y}" + (f"+{carry}" if carry else "") + f"={s}" + (" carry 1" if s >= 10 else "")
                     + f" so {written}")
        carry = s // 10
    if carry:
        parts.append(f"so 1{written}")
    return ", ".join(parts)


def _sub_steps(a, b):  # a >= b >= 0
    da, db, borrow, parts, written = _digits(a), _digits(b), 0, [], ""
    for i in range(len(da)):
        x, y = da[i], (db[i] if i < len(db) else 0)
        y_total = y + borrow
        borrow = int(x < y_total)
        d = x + 10 * borrow - y_total
        written = str(d) + written
        parts.append(f"{x + 10 * borrow}-{y_total}={d}" + (" borrow 1" if borrow else "") + f" so {written}")
    if written.lstrip("0") != written:
        parts.append(f"so {written.lstrip('0') or '0'}")
    return ", ".join(parts)


def _mul_steps(a, b):
    partials = [a * d * 10 ** i for i, d in enumerate(_digits(b))]
    parts = [f"{a}*{d * 10 ** i}={p}" for i, (d, p) in enumerate(zip(_digits(b), partials))]
    if len(partials) > 1:
        parts.append("+".join(str(p) for p in partials) + f"={a * b}")
    return ", ".join(parts)
