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


def test_canonical_form_joins_commutative_twins_and_reordered_numbers():
    from nanor1.rejection import canonical
    assert canonical("What is 7 + 4?") == canonical("What is 4 + 7?") == "What is 4 + 7?"
    assert canonical("Make 13 from 4 4 8 3 with + - * /") == canonical("Make 13 from 3 8 4 4 with + - * /")
    assert canonical("What is 7 + 4?", "masked") == canonical("What is 12 + 30?", "masked") == "What is # + #?"
    assert canonical("What is 7 + 4?", "none") == "What is 7 + 4?"
    kept, removed = dedup([canonical(t) for t in ["What is 7 + 4?", "What is 4 + 7?", "What is 5 + 4?"]])
    assert kept == [0, 2] and removed["exact"] == 1


def test_decontamination_removes_evaluation_prompts_and_their_twins():
    from nanor1.rejection import decontaminate
    collected = ["What is 4 + 7?", "What is 2 + 2?", "what is  7 + 4?", "What is 9 + 1?"]
    assert decontaminate(collected, ["What is 7 + 4?", "What is 1 + 9?"]) == [1]
    assert decontaminate(collected, ["What is 7 + 4?"], mode="none") == [0, 1, 3]  # exact form only


def test_prompt_stages_count_what_they_remove(tmp_path):
    """Prompts drawn from the test split are all removed (decontamination, or dedup of their twins first);
    repeated prompts by dedup; a low embedding threshold merges prompts of one template."""
    import collections
    from nanor1.rejection import canonical, collect_prompts
    cfg = load_config(RejectionConfig, [os.path.join(ROOT, "configs", "rejection_test.py"),
                                        f"--out_dir={tmp_path / 'rs'}", f"--sft.out_dir={tmp_path / 'sft'}"])
    task = make_task("arithmetic", cfg.sft.arithmetic)
    model, tok = _tiny_model_and_tokenizer(task)
    train = task.problems("train", 20, 0)
    counts = collections.Counter()
    test = task.problems("test", 7, 0)
    kept = collect_prompts(cfg, model, tok, task, train + train[:5] + test, counts)
    assert counts["arithmetic/prompts"] == 32 and counts["arithmetic/prompt_dedup_exact"] >= 5
    assert counts["arithmetic/prompt_decontaminated"] >= 1 and not [p for p in kept if p in test]
    distinct_train = {canonical(task.prompt(p)) for p in train}
    assert len(kept) == len(distinct_train) == 32 - sum(v for k, v in counts.items() if "/prompt_" in k)
    cfg.embedding_dedup = 0.01  # prompts of one template embed alike: a low cosine threshold merges them
    counts = collections.Counter()
    n_kept = len(collect_prompts(cfg, model, tok, task, train, counts))
    assert n_kept < len(distinct_train) and counts["arithmetic/prompt_dedup_embedding"] == len(distinct_train) - n_kept


def _tiny_model_and_tokenizer(task):
    import runpy
    from nanor1.model import GPT, ModelConfig
    from nanor1.tasks import corpus
    from nanor1.tokenizer import train_tokenizer
    tok = train_tokenizer(corpus([task], n_per_task=200), 300)
    model_cfg = dict(runpy.run_path(os.path.join(ROOT, "configs", "model_test.py"))["model"], vocab_size=tok.n_vocab)
    torch.manual_seed(0)
    return GPT(ModelConfig(**model_cfg)).eval(), tok


def test_rounds_accumulate_and_mix_in_original_sft_data(tmp_path):
    from nanor1.rejection import training_file
    cfg = RejectionConfig(out_dir=str(tmp_path), sft_mix=0.5, seed=3)
    task = make_task("arithmetic")
    for r, n in ((1, 4), (2, 2)):
        with open(tmp_path / f"round{r}.jsonl", "w") as f:
            for i in range(n):
                f.write(json.dumps({"prompt": f"p{r}{i}", "response": "r", "round": r}) + "\n")
    path, counts = training_file(cfg, 2, [task])
    rows = [json.loads(line) for line in open(path)]
    assert counts == {"finetune_examples": 12, "finetune_sft_examples": 6} and len(rows) == 12
    assert sum(r.get("round") == 1 for r in rows) == 4 and sum(r.get("source") == "sft" for r in rows) == 6
    cfg.accumulate, cfg.sft_mix = False, 0.0
    _, counts = training_file(cfg, 2, [task])
    assert counts == {"finetune_examples": 2, "finetune_sft_examples": 0}


def test_auc_and_filter_report_on_hand_made_scores():
    from nanor1.judges import auc, filter_report
    assert auc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert auc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5  # ties count half
    assert auc([0.9, 0.4, 0.6, 0.1], [1, 1, 0, 0]) == 0.75
    assert auc([0.3], [1]) is None
    rows = {r["filter"]: r for r in filter_report({"rule": [1, 1, 1, 0], "verify": [1, 0, 1, 0]}, [1, 0, 1, 0])}
    assert rows["rule"]["precision"] == 2 / 3 and rows["rule"]["recall"] == 1.0 and rows["rule"]["kept"] == 0.75
    assert rows["verify"]["precision"] == rows["verify"]["recall"] == rows["verify"]["auc"] == 1.0


def test_judge_data_is_balanced_and_in_the_chat_format():
    from nanor1.judges import VERDICTS, judge_pairs
    rows = judge_pairs(["What is 1 + 1?"] * 5, ["<answer>2</answer>"] * 3 + ["<answer>3</answer>"] * 2,
                       [True, True, True, False, False])
    assert [r["label"] for r in rows] == [True, True, False, False]
    assert rows[0]["response"] == VERDICTS[True] and "What is 1 + 1?" in rows[0]["prompt"]


def test_a_round_with_the_judge_instead_of_the_verifier(tmp_path):
    """The task treated as unverifiable: the generative judge filters, and the report scores every filter."""
    cfg = load_config(RejectionConfig, [
        os.path.join(ROOT, "configs", "rejection_test.py"), f"--out_dir={tmp_path / 'rs'}",
        f"--sft.out_dir={tmp_path / 'sft'}", "--judge_steps=10", "--filters=('format', 'length', 'judge')",
        "--drop_always_solved=false", "--drop_never_solved=false", "--rank_by=first", "--label_prompts=100",
        "--sft.max_steps=150", "--sft.save_every=150"])
    run(cfg)
    report = json.load(open(tmp_path / "rs" / "filter_report.json"))
    names = [r["filter"] for r in report["filters"]]
    assert names == ["rules", "orm", "judge", "majority", "verify"]
    assert 0 < report["responses"] <= 16 * cfg.n_samples and report["responses"] % cfg.n_samples == 0  # small val
    verify_row = report["filters"][-1]
    assert verify_row["precision"] in (None, 1.0) and all(0 <= r["kept"] <= 1 for r in report["filters"])
    rows = [json.loads(line) for line in open(tmp_path / "rs" / "round1.jsonl")]
    assert all(r["judge"] >= 0.5 for r in rows)  # only what the judge let through was kept (maybe nothing)
    log = [json.loads(line) for line in open(tmp_path / "rs" / "metrics.jsonl")]
    assert "arithmetic/filter_judge_removed" in log[1] and log[0]["judge_examples"] > 0


def test_judge_filter_without_a_judge_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="judge_steps"):
        run(RejectionConfig(out_dir=str(tmp_path), filters=("format", "judge")))
