import json
import os

import pytest
import torch

from nanor1 import checkpoint
from nanor1.config import ConfigError, load_config
from nanor1.rejection import (RejectionConfig, dedup, embedding_dedup, majority_vote, rule_charset, rule_equations,
                              rule_format, rule_length, rule_repetition, run, train_orm, verify)
from nanor1.tasks import make_task
from nanor1.tasks.verify import Score

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = RejectionConfig(min_tokens=3, max_tokens=20, max_repeat_frac=0.3)


def sample(text, n_ids=5, finished=True, correct=False, answer=None):
    return {"text": text, "ids": list(range(n_ids)), "finished": finished,
            "score": Score(0.1, 1.0 if correct else 0.0, correct, answer)}


def test_rule_filters_on_hand_made_cases():
    assert rule_format(sample("<think>a</think><answer>1</answer>"), None, CFG)
    assert not rule_format(sample("<answer>1</answer>"), None, CFG)
    assert rule_length(sample("x", n_ids=10), None, CFG)
    assert not rule_length(sample("x", n_ids=2), None, CFG) and not rule_length(sample("x", n_ids=21), None, CFG)
    assert not rule_length(sample("x", n_ids=10, finished=False), None, CFG)  # truncated
    assert rule_repetition(sample("1 + 2 = 3 , so the answer is 3 and we are done here today"), None, CFG)
    assert not rule_repetition(sample("go back and forth " * 20), None, CFG)
    assert rule_charset(sample("12+3=15, left 15 7\n"), None, CFG)
    assert not rule_charset(sample("12+3=15 是"), None, CFG) and not rule_charset(sample("x\x00"), None, CFG)
    assert verify(sample("", correct=True), None, CFG) and not verify(sample(""), None, CFG)


def test_equations_filter_checks_every_step():
    import random
    from nanor1.tasks import Arithmetic, ArithmeticConfig, Countdown
    ok = "<think>7+5=12 carry 1 so 2, 4+8+1=13 carry 1 so 32, so 132</think><answer>132</answer>"
    assert rule_equations(sample(ok), None, CFG)
    assert not rule_equations(sample(ok.replace("4+8+1=13", "4+8+1=14")), None, CFG)
    assert not rule_equations(sample("<think>16+9=7, left 7 3</think><answer>16+9</answer>"), None, CFG)
    assert not rule_equations(sample("<think>9/0=1</think><answer>1</answer>"), None, CFG)
    assert not rule_equations(sample("no format 1+1=2"), None, CFG)
    rng = random.Random(0)  # every generated SFT target passes: the filter only removes real slips
    for task in (Arithmetic(ArithmeticConfig(max_digits=3, step_frac=1.0)), Countdown()):
        for p in task.problems("train", 100, 0):
            assert rule_equations(sample(task.sft_target(p, rng)), p, CFG)


def test_majority_vote_keeps_the_agreeing_samples():
    samples = [sample("a", answer="5"), sample("b", answer="7"), sample("c", answer="5"), sample("d", answer=None)]
    assert [s["text"] for s in majority_vote(samples)] == ["a", "c"]
    assert majority_vote([sample("x")]) == []


def test_dedup_finds_planted_near_duplicates_and_keeps_distinct_texts():
    base = "Make 24 from 3 7 9 with + - * / each number at most once and show your search"
    texts = [
        base,
        base.upper() + "  ",  # exact after normalising case and spaces
        base.replace("show your search", "show the search"),  # near duplicate (one word changed)
        "What is 47 + 85? Think step by step about carries and write the answer",
        "Peter flies from Spain to Germany then to Russia; how far does he fly in total?",
        "What is 47 + 85? Think step by step about carries and write the final answer",  # near duplicate
    ]
    kept, removed = dedup(texts, threshold=0.6)
    assert kept == [0, 3, 4] and removed == {"exact": 1, "near": 2}
    distinct = [f"problem {i}: make {i * 7 % 50} from {i} {i + 3} {i * 2}" for i in range(40)]
    assert len(dedup(distinct, threshold=0.8)[0]) == 40


def test_embedding_dedup_by_cosine():
    v = torch.tensor([[1.0, 0.0], [0.99, 0.01], [0.0, 1.0], [0.7, 0.7]])
    assert embedding_dedup(v, threshold=0.95) == [0, 2, 3]


def test_outcome_reward_model_learns_the_verifier_labels():
    torch.manual_seed(0)
    feats = torch.randn(200, 8)
    labels = (feats[:, 0] + 0.5 * feats[:, 1] > 0).long()
    orm = train_orm(feats, labels)
    acc = ((orm(feats) > 0).long() == labels).float().mean()
    assert acc > 0.9


def test_a_tiny_round_end_to_end_yields_a_verified_dataset(tmp_path):
    cfg = load_config(RejectionConfig, [
        os.path.join(ROOT, "configs", "rejection_test.py"), f"--out_dir={tmp_path / 'rs'}",
        f"--sft.out_dir={tmp_path / 'sft'}"])
    run(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "rs" / "round1.jsonl")]
    assert rows, "the round kept nothing"
    task = make_task("arithmetic", cfg.sft.arithmetic)
    for r in rows:  # every kept entry passes its verifier again, from its text alone
        a, op, b = r["prompt"][len("What is "):-1].split(" ")
        problem = {"a": int(a), "op": op, "b": int(b),
                   "answer": {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]}
        assert task.score(problem, r["response"]).correct
        assert {"prompt_id", "sample_index", "reward", "orm", "round"} <= set(r)
    log = [json.loads(line) for line in open(tmp_path / "rs" / "metrics.jsonl")]
    assert log[0]["step"] == 0 and log[1]["kept"] == len(rows) and "arithmetic/filter_verify_removed" in log[1]
    assert checkpoint.load(tmp_path / "rs" / "round1")["step"] == cfg.finetune_steps


def test_unknown_filter_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="filters"):
        run(RejectionConfig(out_dir=str(tmp_path), filters=("format", "vibes")))
