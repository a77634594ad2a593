"""Fuzzing the surfaces that read untrusted input, as a table (docs/reliability.md).

    python -m nanor1.bench.reliability [--n 10000] [--out docs/reliability.md]

Each surface gets n hostile inputs from a seeded generator and must answer every one with a result or its own
clear error (ValueError / VerifyError / ConfigError), never another exception, never a hang. Surfaces:
  - each task's score() on model completions (the reward path: R1-Zero format, answers, Countdown expressions);
  - parse_number and evaluate (the verifier's two parsers);
  - read_jsonl on hostile lines (problem files, SFT data files, GSM8K);
  - the config loader on hostile --key=value overrides;
  - the tokenizer on hostile text.
tests/test_reliability.py runs the same generators (>= 10,000 completions through every task's score).
"""
import argparse
import os
import random
import string
import tempfile
import time

TAGS = ["<think>", "</think>", "<answer>", "</answer>", "<|eos|>", "<|pad|>", "<|user|>"]
ATOMS = ["0", "7", "12", "-3", "1,234", "1,5", "1 2", "5,0", "2 1/2", "3/0", "1e309", "9" * 5000, "٣", "１２", "NaN",
         "inf", "-0", ".5", "5.", "$7", "--7", "7/", "(", ")", "((((((((((((((((((((((((((1", "1" + "+1" * 300,
         "9**9**9", "__import__('os')", "lambda: 1", "1/(1-1)", "2*(3+4)", "(3+4)*2", "x", "\x00", "\u202e", " " * 300,
         "\n", "found", "give up", "=", "24", "10+14", "(25+3)-(7-3)", "1000000000000*1000000000000"]


def hostile_completion(rng):
    """A completion a broken or adversarial policy might write: tags out of order, nested, repeated, missing;
    answers that are huge, unicode, code, empty, unbalanced, or right."""
    parts = []
    for _ in range(rng.randint(0, 8)):
        roll = rng.random()
        if roll < 0.35:
            parts.append(rng.choice(TAGS))
        elif roll < 0.75:
            parts.append(rng.choice(ATOMS))
        else:
            parts.append("".join(rng.choice(string.printable) for _ in range(rng.randint(0, 40))))
    if rng.random() < 0.4:  # well-formed shell around a hostile answer: the verifier's own path
        return f"<think>{''.join(parts)}</think><answer>{rng.choice(ATOMS)}{rng.choice(['', ' ', rng.choice(ATOMS)])}</answer>"
    return "".join(parts)


def hostile_json_line(rng):
    return rng.choice([
        '{"question": "q", "answer": "a\\n#### 5"}', '{"question": 1}', "[1, 2]", "{oops", "",
        '{"a": ' + "9" * 5000 + "}", "[" * 10000 + "]" * 10000, '{"question": "\\ud800", "answer": "#### 1"}',
        '{"prompt": "p", "response": "r"}', '{"nums": [1, 2], "target": 3}', "\xff\xfe", "null",
        '{"question": "' + " " * 200 + '", "answer": "#### 1,5"}',
    ])


def hostile_override(rng):
    key = rng.choice(["lr", "save_every", "tasks", "model.dim", "model.attn_impl", "dtype", "max_steps", "nope",
                      "model", "arithmetic.ops", "eval_temperature", "batch_size"])
    value = rng.choice(["0", "-1", "1e999", "nan", "{'foo': 1}", "[]", "true", "'x'", "__import__('os')", "",
                        "1" * 5000, "None", "3", "0.5", "(1,2)", "{'arithmetic': -1}"])
    return f"--{key}={value}"


def fuzz(name, n, seed=0):
    """-> (inputs tried, failures (list of repr'd exceptions), worst seconds for one input)."""
    from nanor1.config import ConfigError, load_config
    from nanor1.jsonl import read_jsonl
    from nanor1.sft import SFTConfig
    from nanor1.tasks import make_task
    from nanor1.tasks.gsm8k import GSM8KConfig
    from nanor1.tasks.verify import VerifyError, evaluate, parse_number

    rng = random.Random(seed)
    ok_errors = (ValueError,)  # VerifyError and ConfigError are ValueErrors
    gsm8k_fixture = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "data", "gsm8k")
    if name.startswith("score:"):
        task_name = name.split(":")[1]
        task = make_task(task_name, GSM8KConfig(path=gsm8k_fixture) if task_name == "gsm8k" else None)
        problems = task.problems("test", 20, seed)

        def one():
            s = task.score(rng.choice(problems), hostile_completion(rng))
            assert s.reward in (0.0, 0.1, 1.0), s
    elif name == "parse_number":
        def one():
            try:
                parse_number(rng.choice(ATOMS) + rng.choice(["", ",", " ", rng.choice(ATOMS)]))
            except VerifyError:
                pass
    elif name == "evaluate":
        def one():
            try:
                evaluate("".join(rng.choice(ATOMS + ["+", "-", "*", "/"]) for _ in range(rng.randint(1, 12))))
            except VerifyError:
                pass
    elif name == "read_jsonl":
        folder = tempfile.mkdtemp()

        def one():
            path = os.path.join(folder, "f.jsonl")
            with open(path, "wb") as f:
                f.write(hostile_json_line(rng).encode("utf-8", "surrogatepass") + b"\n")
            try:
                list(read_jsonl(path))
            except ValueError:
                pass
    elif name == "config":
        def one():
            try:
                load_config(SFTConfig, [hostile_override(rng)]).check()
            except ConfigError:
                pass
    elif name == "tokenizer":
        from nanor1.tasks import corpus
        from nanor1.tokenizer import train_tokenizer
        tok = train_tokenizer(corpus([make_task("arithmetic")], n_per_task=50), 300)

        def one():
            text = hostile_completion(rng) * rng.choice([1, 10, 1000, 100_000])
            try:
                tok.decode(tok.encode_response(text))
            except ValueError:
                pass
    else:
        raise ValueError(f"unknown surface {name!r}")
    failures, worst = [], 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            one()
        except ok_errors:
            pass
        except BaseException as e:  # noqa: B036  PanicException, RecursionError, ... are what we look for
            if isinstance(e, KeyboardInterrupt):
                raise
            failures.append(f"{type(e).__name__}: {str(e)[:80]}")
        worst = max(worst, time.perf_counter() - t0)
    return n, failures, worst


SURFACES = ["score:arithmetic", "score:countdown", "score:gsm8k", "parse_number", "evaluate", "read_jsonl", "config",
            "tokenizer"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    lines = ["| surface | inputs tried | failures | worst time per input |", "|---|---|---|---|"]
    for name in SURFACES:
        n = args.n if name.startswith(("score", "parse", "evaluate")) else max(1, args.n // 10)
        tried, failures, worst = fuzz(name, n)
        lines.append(f"| {name} | {tried} | {len(failures)}{': ' + failures[0] if failures else ''} | "
                     f"{worst * 1000:.1f} ms |")
        print(lines[-1], flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(HEADER.format(n=args.n) + "\n".join(lines) + "\n" + FOOTER)


HEADER = """# Reliability: what untrusted input can do

`python -m nanor1.bench.reliability --n {n} --out docs/reliability.md` (2-core x86_64 CPU). Every input must get a
result or the surface's own one-line error (ValueError, VerifyError, ConfigError); a failure is anything else
(a crash, a PanicException, a RecursionError). `tests/test_reliability.py` runs the same generators in CI
(10,000 hostile completions through every task's score) and the fault-injection cases below.

"""
FOOTER = """
Fault injection (each a test in tests/test_cli.py or tests/test_reliability.py):

| fault | before | now |
|---|---|---|
| crash during the final evaluation | final checkpoint lost | checkpoint saved before evaluating |
| save killed mid-write, 200 times | 1.57 GB of temp files | temp files removed when the next run starts |
| a flipped byte in ckpt.pt | loads with changed weights | checksum mismatch: a one-line error |
| crash between the tokenizer's two writes | every later run fails | the folder counts as absent and is retrained |
| kill then --resume=true | metrics rows twice | metrics.jsonl cut back to the checkpoint's step |
| --lr=1e999 / a loss that turns NaN | NaN checkpoint, exit 0 | 'must be a finite number' / stops before the step, exit 1 |
| 10^6 spaces in a question | tiktoken PanicException | ValueError: text longer than the tokenizer accepts |
| non-UTF-8 byte, 5000-digit number, 10^4-deep nesting in a JSONL | traceback without a line | error naming file:line |
"""

if __name__ == "__main__":
    main()
