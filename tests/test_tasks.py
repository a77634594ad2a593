import collections
import itertools
import operator
import os
import random
import re
from fractions import Fraction

import pytest

from nanor1.tasks import Arithmetic, ArithmeticConfig, Countdown, CountdownConfig, GSM8KConfig, make_task
from nanor1.tasks.countdown import check_answer, search_trace
from nanor1.tasks.gsm8k import load
from nanor1.tasks.verify import parse_response


def test_arithmetic_targets_are_right_and_steps_spell_the_work():
    task = Arithmetic(ArithmeticConfig(min_digits=1, max_digits=3, step_frac=1.0))
    rng = random.Random(0)
    for p in task.problems("train", 300, 0):
        target = task.sft_target(p, rng)
        assert task.score(p, target).correct
        assert p["answer"] == {"+": operator.add, "-": operator.sub, "*": operator.mul}[p["op"]](p["a"], p["b"])
    assert Arithmetic(ArithmeticConfig(step_frac=1.0)).steps({"a": 47, "b": 85, "op": "+"}) == \
        "7+5=12 carry 1 so 2, 4+8+1=13 carry 1 so 32, so 132"
    assert task.steps({"a": 52, "b": 17, "op": "-"}) == "12-7=5 borrow 1 so 5, 5-2=3 so 35"
    assert task.steps({"a": 52, "b": 49, "op": "-"}) == "12-9=3 borrow 1 so 3, 5-5=0 so 03, so 3"
    assert task.steps({"a": 3, "b": 8, "op": "-"}) == "3<8 so -(8-3): 8-3=5 so 5"
    assert task.steps({"a": 47, "b": 85, "op": "*"}) == "47*5=235, 47*80=3760, 235+3760=3995"
    direct = Arithmetic(ArithmeticConfig(step_frac=0.0))
    assert direct.sft_target({"a": 1, "b": 2, "op": "+", "answer": 3}, rng) == "<think></think><answer>3</answer>"


def test_splits_are_disjoint_and_seeded():
    for task in [Arithmetic(), Countdown()]:
        train = {p["id"] for p in task.problems("train", 2000, 0)}
        test = {p["id"] for p in task.problems("test", 300, 0)}
        assert not train & test
        assert [p["id"] for p in task.problems("train", 50, 3)] == [p["id"] for p in task.problems("train", 50, 3)]
        assert [p["id"] for p in task.problems("train", 50, 3)] != [p["id"] for p in task.problems("train", 50, 4)]


def _brute_force_values(nums):
    """Independent check: every value of every expression over every ordered subset (+ - * / exactly)."""
    values = set()
    def rec(items):
        for v in items:
            values.add(v)
        for i, j in itertools.permutations(range(len(items)), 2):
            a, b = items[i], items[j]
            rest = [x for k, x in enumerate(items) if k not in (i, j)]
            for v in {a + b, a - b, a * b} | ({a / b} if b else set()):
                rec(rest + [v])
    rec([Fraction(n) for n in nums])
    return values


def test_countdown_problems_are_solvable_and_heldout_targets_stay_out_of_train():
    task = Countdown(CountdownConfig(n_numbers=(3, 4), max_number=30))
    assert len(task.heldout_targets) == round(0.1 * 91)
    train = task.problems("train", 400, 0)
    assert not {p["target"] for p in train} & task.heldout_targets
    test = task.problems("test", 200, 0)
    assert {p["target"] for p in test} & task.heldout_targets  # held-out targets do show up in test
    for p in train[:60]:
        assert Fraction(p["target"]) in _brute_force_values(p["nums"])
    for p in train + test:
        _, answer, solved = search_trace(p["nums"], p["target"], 10 ** 9)
        assert solved and check_answer(answer, p["nums"], p["target"])


def test_countdown_traces_end_in_a_wellformed_answer_and_solved_ones_verify():
    task = Countdown(CountdownConfig(give_up=0.3))
    rng = random.Random(0)
    outcomes = collections.Counter()
    for p in task.problems("train", 300, 1):
        text = task.sft_target(p, rng)
        parsed = parse_response(text)
        assert parsed is not None, text
        think, answer = parsed
        solved = think.endswith("found")
        assert solved or think.endswith("give up")
        assert task.score(p, text).correct == solved
        outcomes[solved] += 1
    assert outcomes[True] > 50 and outcomes[False] > 50  # the patience spread gives both kinds


def test_countdown_traces_give_up_after_each_dead_end_with_the_same_probability():
    # geometric budgets: the k-th dead end is followed by "give up" with probability give_up, for every k,
    # so a model can learn the decision without counting lines
    task = Countdown(CountdownConfig(n_numbers=(3, 4), max_number=9, max_target=30, give_up=0.4, max_value=60))
    rng = random.Random(0)
    followed = collections.defaultdict(lambda: [0, 0])  # dead-end index -> [gave up, went on]
    for p in task.problems("train", 3000, 2):
        lines = task.sft_target(p, rng).split("</think>")[0].removeprefix("<think>").split("\n")
        for line in lines:
            for value in re.findall(r"=(\d+)", line):
                assert int(value) <= 60, line  # max_value caps every intermediate result
        k = 0
        for line, nxt in zip(lines, lines[1:]):
            if line.endswith("back"):
                followed[min(k, 2)][nxt != "give up"] += 1
                k += 1
        states = [tuple(sorted(line.split(", left ")[1].split())) if ", left " in line
                  else ("leaf", line.split(",")[0].split("=")[1]) for line in lines if line != "give up"]
        assert len(states) == len(set(states)), lines  # every state is explored once
        assert lines[-1] in ("give up",) or lines[-1].endswith("found")
        if lines[-1] == "give up":
            assert lines[-2].endswith("back")  # giving up only ever follows a dead end
    for k, (gave_up, went_on) in followed.items():
        n = gave_up + went_on
        assert n > 300 and abs(gave_up / n - 0.4) < 4 * (0.24 / n) ** 0.5, (k, gave_up, n)


def test_traits_say_what_a_completion_does():
    countdown, arithmetic = Countdown(), Arithmetic()
    trace, answer, _ = search_trace([25, 3, 7, 2], 24, 2)
    traits = countdown.traits(f"<think>{trace}</think><answer>{answer}</answer>")
    assert traits == {"dead_ends": 3.0, "gave_up": 1.0, "claims_found": 0.0}
    found = countdown.traits("<think>25-1=24, found</think><answer>25-1</answer>")
    assert found == {"dead_ends": 0.0, "gave_up": 0.0, "claims_found": 1.0}
    assert arithmetic.traits("<think></think><answer>12</answer>") == {"step_by_step": 0.0}
    assert arithmetic.traits("<think>7+5=12 carry 1 so 2, so 12</think><answer>12</answer>") == {"step_by_step": 1.0}


def test_countdown_trace_example():
    trace, answer, solved = search_trace([25, 3, 7, 2], 24, 100)
    assert solved and check_answer(answer, [25, 3, 7, 2], 24)
    first = trace.split("\n")[0]
    assert first.startswith("25-") or first.startswith("25+")  # closest-first heuristic
    trace, answer, solved = search_trace([25, 3, 7, 2], 24, 0)  # no patience: gives up at the first dead end
    assert not solved and trace.endswith("back\ngive up") and trace.count("back") == 1
    trace, _, _ = search_trace([25, 3, 7, 2], 24, 2)
    assert trace.endswith("back\ngive up") and trace.count("back") == 3


def test_countdown_checker_rejects_reused_or_foreign_numbers():
    assert check_answer("25-1", [25, 1, 3], 24)
    from nanor1.tasks.verify import VerifyError
    with pytest.raises(VerifyError):
        check_answer("12+12", [12, 3], 24)
    with pytest.raises(VerifyError):
        check_answer("20+4", [20, 3], 24)


# The shipped fixture always; the full official data set too where it is at hand (this workplace's ../shared,
# or NANOR1_GSM8K=/path/to/gsm8k), so the full check runs in CI without the suite depending on it.
_FULL_GSM8K = os.environ.get("NANOR1_GSM8K") or os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                                                              "gsm8k")
GSM8K_SETS = [("fixture", os.path.join(os.path.dirname(__file__), "data", "gsm8k"), (28, 12))] + (
    [("official", _FULL_GSM8K, (7473, 1319))] if os.path.exists(os.path.join(_FULL_GSM8K, "test.jsonl")) else [])


@pytest.mark.parametrize("name,path,sizes", GSM8K_SETS, ids=[s[0] for s in GSM8K_SETS])
def test_gsm8k_all_answers_parse(name, path, sizes):
    train, test = load(path, "train"), load(path, "test")
    assert (len(train), len(test)) == sizes
    assert all(p["answer"].denominator == 1 for p in train + test)  # all official answers are integers
    assert any(p["answer"] < 0 for p in train) and any(p["answer"] >= 1000 for p in test)  # minus signs, commas
    task = make_task("gsm8k", GSM8KConfig(path=path))
    for p in train[:500] + test:
        target = task.sft_target(p)
        assert "<<" not in target and task.score(p, target).correct


def test_gsm8k_malformed_lines_name_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1,234"}\n{"question": 1}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: expected string fields"):
        load(tmp_path, "train")
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "no final line"}\n')
    with pytest.raises(ValueError, match=r"train.jsonl:1: no final"):
        load(tmp_path, "train")
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1,234"}\n{oops\n')
    with pytest.raises(ValueError, match=r"train.jsonl:2: not valid JSON"):
        load(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"test.jsonl"):
        load(tmp_path, "test")
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1,234"}\n')
    assert load(tmp_path, "train")[0]["answer"] == 1234
    (tmp_path / "train.jsonl").write_text("\n\n")
    with pytest.raises(ValueError, match=r"train.jsonl: no problems"):
        load(tmp_path, "train")
