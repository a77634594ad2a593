import random
import string
from fractions import Fraction

import pytest

from nanor1.tasks import make_task
from nanor1.tasks.countdown import solve
from nanor1.tasks.verify import VerifyError, evaluate, parse_number, parse_response


def test_evaluate_exact_fractions():
    assert evaluate("(25-1)*(3-2)") == (Fraction(24), [25, 1, 3, 2])
    assert evaluate("7/2 + -1/2")[0] == Fraction(3)
    assert evaluate(" 2 × 3 ÷ 4 ")[0] == Fraction(3, 2)


@pytest.mark.parametrize("expr", [
    "__import__('os')", "9**9**9", "1/0", "2**10", "a+1", "1e9", "1.5+1", "[1]", "1 if 1 else 2", "(1,2)",
    "9" * 13, "(" * 1000 + "1" + ")" * 1000, "1+" * 5000 + "1", "-" * 190 + "1", "٣+4", "1_000", "0x10", "", "()",
    "(99999999*99999999*99999999*99999999*99999999*99999999*99999999*99999999*99999999*99999999*99999999)",
])
def test_evaluate_rejects_everything_else(expr):
    with pytest.raises(VerifyError):
        evaluate(expr)


def test_parse_number_normalises():
    assert parse_number("1,234") == 1234 and parse_number("$5") == 5 and parse_number("7.0") == 7
    assert parse_number("-3/4") == Fraction(-3, 4) and parse_number("18.") == 18 and parse_number(".5") == Fraction(1, 2)
    for bad in ["٣", "1e3", "inf", "nan", "five", "", "1/0", "1" * 100, "--1", "１２"]:
        with pytest.raises(VerifyError):
            parse_number(bad)


def test_parse_response_format():
    assert parse_response("<think>x</think><answer> 4 </answer>") == ("x", "4")
    assert parse_response("  <think>\nx\n</think>\n<answer>4</answer>\n") == ("\nx\n", "4")
    for bad in ["<answer>4</answer>", "<think>x</think>", "<think>x</think><answer>4</answer><answer>5</answer>",
                "<think>x</think><answer>4</answer> trailing", "<think><think>x</think><answer>4</answer>",
                "<think>x</think><answer>" + "1" * 30_000 + "</answer>", None, 5]:
        assert parse_response(bad) is None


ADVERSARIAL_ANSWERS = [
    "__import__('os').system('echo hi')", "9**9**9", "1/0", "x" * 10_000, "(" * 1000 + "1" + ")" * 1000,
    "٢٤", "２４", "<answer>24</answer>", "24</answer><answer>24", "exec('1')", "eval('24')", "\x00", "24; import os",
]


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "gsm8k"])
def test_adversarial_completions_score_zero_or_format_only(name, gsm8k_path):
    from nanor1.tasks import GSM8KConfig
    task = make_task(name, GSM8KConfig(path=gsm8k_path) if name == "gsm8k" else None)
    problem = task.problems("test", 1, 0)[0]
    for answer in ADVERSARIAL_ANSWERS:
        for text in [f"<think>x</think><answer>{answer}</answer>", answer, f"<answer>{answer}</answer>" * 3]:
            s = task.score(problem, text)
            assert not s.correct and s.reward in (0.0, 0.1)
    # several answer tags, even with the right answer among them, is not well-formed
    right = solve(problem["nums"], problem["target"]) if name == "countdown" else str(problem["answer"])
    s = task.score(problem, f"<think></think><answer>{right}</answer><answer>{right}</answer>")
    assert s.reward == 0.0 and not s.correct
    assert task.score(problem, f"<think></think><answer>{right}</answer>").correct


@pytest.mark.parametrize("name", ["arithmetic", "countdown", "gsm8k"])
def test_fuzz_rewards_never_raise(name, gsm8k_path):
    from nanor1.tasks import GSM8KConfig
    task = make_task(name, GSM8KConfig(path=gsm8k_path) if name == "gsm8k" else None)
    problems = task.problems("train", 5, 0)
    rng = random.Random(1)
    alphabet = string.printable + "()+-*/<>ä٣✓"
    pieces = ["<think>", "</think>", "<answer>", "</answer>", "(", ")", "**", "/0", "9" * 20, " ", "-", "1,0", "$"]
    for i in range(3000):
        body = "".join(rng.choice(pieces) if rng.random() < 0.3 else rng.choice(alphabet)
                       for _ in range(rng.randint(0, 60)))
        text = body if i % 2 else f"<think>{body[:10]}</think><answer>{body}</answer>"
        s = task.score(problems[i % len(problems)], text)
        assert s.reward in (0.0, 0.1, 1.0)
