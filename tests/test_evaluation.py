"""Honest evaluation (issue #15): distinct problems, splits that do not leak, a validation split, per-problem
outcomes, paired bootstrap CIs; DAPO's refill and overlong shaping."""
import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sample  # noqa: E402
import train_grpo  # noqa: E402
from nanor1 import checkpoint  # noqa: E402
from nanor1.config import load_config  # noqa: E402
from nanor1.evaluate import comparison_table, paired_bootstrap  # noqa: E402
from nanor1.tasks import ArithmeticConfig, CountdownConfig, make_task  # noqa: E402
from nanor1.tasks.arithmetic import split_key  # noqa: E402


def test_arithmetic_splits_do_not_leak_through_commutativity():
    task = make_task("arithmetic", ArithmeticConfig(ops=("+", "-", "*")))
    train = {split_key(p["a"], p["op"], p["b"]) for p in task.universe("train")}
    for split in ("val", "test"):
        held = task.universe(split)
        assert held and not any(split_key(p["a"], p["op"], p["b"]) in train for p in held)
        assert not any(f"{p['b']}{p['op']}{p['a']}" in {q["id"] for q in task.universe("train")}
                       for p in held if p["op"] in "+*")  # "7+4" in test: "4+7" is not in train


@pytest.mark.parametrize("name,cfg", [("arithmetic", ArithmeticConfig()),
                                      ("countdown", CountdownConfig(n_numbers=(3,), max_number=9, max_target=30,
                                                                    max_value=60, heldout_frac=0.0))])
def test_problems_are_distinct_and_the_whole_split_when_asked_for_more(name, cfg):
    task = make_task(name, cfg)
    universe = {p["id"] for p in task.universe("test")}
    drawn = task.problems("test", 10 ** 6, seed=3)
    assert len(drawn) == len(universe) and {p["id"] for p in drawn} == universe  # all of it, no repeats
    some = task.problems("test", 50, seed=3)
    assert len({p["id"] for p in some}) == 50 and [p["id"] for p in some] == [p["id"] for p in
                                                                                 task.problems("test", 50, seed=3)]
    assert not {p["id"] for p in task.problems("val", 10 ** 6, 0)} & universe


def test_countdown_without_an_enumerable_universe_still_draws_distinct():
    task = make_task("countdown", CountdownConfig())  # numbers 1-50, 3-4 of them: not listed
    assert task.universe("test") is None
    ids = [p["id"] for p in task.problems("test", 300, 0)]
    assert len(set(ids)) == 300


def test_paired_bootstrap_recovers_a_known_difference():
    before = [{"id": str(i), "n": 4, "correct": i % 5, "length": 30.0} for i in range(400)]
    after = [{"id": str(i), "n": 4, "correct": min(4, i % 5 + (i % 2)), "length": 40.0 + i % 3} for i in range(400)]
    cmp = paired_bootstrap(before, after, n_boot=2000)
    true = sum(a["correct"] - b["correct"] for a, b in zip(after, before)) / 4 / 400
    assert cmp["problems"] == 400 and abs(cmp["pass@1"]["diff"] - true) < 1e-9
    assert cmp["pass@1"]["lo"] < true < cmp["pass@1"]["hi"] and cmp["pass@1"]["hi"] - cmp["pass@1"]["lo"] < 0.1
    mean_after = sum(a["length"] for a in after) / 400
    assert cmp["length"]["lo"] > 9.0 and abs(cmp["length"]["rel"] - (mean_after / 30 - 1)) < 1e-9
    assert "| pass@1 |" in comparison_table(cmp)
    same = paired_bootstrap(before, before, n_boot=500)
    assert same["pass@1"]["lo"] == same["pass@1"]["hi"] == 0.0


def _grpo_cfg(tmp_path, *overrides):
    return load_config(train_grpo.GRPOConfig, [os.path.join(ROOT, "configs", "grpo_test.py"),
                                               f"--out_dir={tmp_path / 'grpo'}", f"--sft.out_dir={tmp_path / 'sft'}",
                                               *overrides]).check()


def test_overlong_penalty_is_daposs_soft_ramp():
    assert [train_grpo.overlong_penalty(n, 100, 20) for n in (50, 80, 90, 100, 120)] == [0.0, 0.0, -0.5, -1.0, -1.0]
    assert train_grpo.overlong_penalty(100, 100, 0) == 0.0


def test_dynamic_sampling_refills_with_informative_groups(tmp_path):
    cfg = _grpo_cfg(tmp_path, "--dynamic_sampling=true", "--refill_rounds=3", "--prompts_per_step=4")
    model, tok, _ = checkpoint.load_model(train_grpo.cold_start(cfg))
    precision = torch.autocast("cpu", enabled=False)
    task = make_task("arithmetic", cfg.arithmetic)
    groups, first, rounds = train_grpo.collect_batch(cfg, model, tok, task, 0, lambda: precision)
    assert len(first) == 4 and all(train_grpo.informative(g) for g in groups) and len(groups) <= 4
    assert rounds >= 1 and (len(groups) == 4 or rounds == 4)  # full, or out of refill rounds
    no_refill = dataclasses_replace(cfg, refill_rounds=0)
    groups0, first0, rounds0 = train_grpo.collect_batch(no_refill, model, tok, task, 0, lambda: precision)
    assert rounds0 == 1 and len(groups0) == sum(train_grpo.informative(g) for g in first0) <= len(groups)


def dataclasses_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_grpo_saves_outcomes_and_completions_and_sample_py_compares(tmp_path, capsys):
    cfg = _grpo_cfg(tmp_path, "--steps=2", "--eval_every=2", "--eval_samples=2", "--eval_temperature=1.0")
    train_grpo.train(cfg)
    evals = sorted(os.listdir(tmp_path / "grpo" / "evals"))
    assert evals == ["step00000_arithmetic.jsonl", "step00002_arithmetic.jsonl"]
    rows = [json.loads(line) for line in open(tmp_path / "grpo" / "evals" / evals[0])]
    assert {"id", "prompt", "n", "correct", "length", "completion"} <= set(rows[0]) and rows[0]["n"] == 2
    md = open(tmp_path / "grpo" / "completions.md").read()
    assert "**step 0**" in md and "**step 2**" in md
    capsys.readouterr()
    sample.main([str(tmp_path / "grpo" / "evals" / evals[0]), str(tmp_path / "grpo" / "evals" / evals[1])])
    assert "| pass@1 |" in capsys.readouterr().out
    sample.main([str(tmp_path / "sft"), str(tmp_path / "grpo"), "--task", "arithmetic", "--count", "20", "--n", "2",
                 "--save_outcomes", str(tmp_path / "cmp"), "--bootstrap", "200", "--max_new_tokens", "12"])
    out = capsys.readouterr().out
    assert "=== before" in out and "=== after" in out and "| length |" in out
    assert os.path.exists(tmp_path / "cmp_before.jsonl") and os.path.exists(tmp_path / "cmp_after.jsonl")


def test_compare_several_arms_against_one_baseline(tmp_path, capsys):
    from nanor1 import compare
    arms = [("base", lambda i: i % 2, 0), ("a", lambda i: i % 2 + 1, 5), ("b", lambda i: i % 2, 0)]
    rows = {name: [{"id": str(i), "n": 4, "correct": c(i), "length": 10.0 + d} for i in range(200)]
            for name, c, d in arms}
    paths = {}
    for name, rs in rows.items():
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rs))
    compare.main([str(paths["base"]), f"a={paths['a']}", f"b={paths['b']}", "--out", str(tmp_path / "cmp"),
                  "--bootstrap", "500"])
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| a vs baseline | pass@1 | 0.125 | 0.375 | +0.250 | [+0.250, +0.250] |" in table
    assert "| b vs baseline | length | 10.0 | 10.0 | +0.0 | [+0.0, +0.0] |" in table
    assert "| b vs a | pass@1 |" in table  # every pair of arms too
    with pytest.raises(SystemExit, match="not NAME=outcomes.jsonl"):
        compare.main([str(paths["base"]), str(paths["a"])])


@pytest.mark.parametrize("name", ["search", "moe", "cross_entropy"])
def test_course_experiments_run_and_draw(name, tmp_path, capsys):
    from nanor1 import experiments
    experiments.main([name, "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "plot: " in out and len(out.splitlines()) >= 4
    if "none" not in out.splitlines()[-1]:
        assert (tmp_path / f"{name}.png").exists()
