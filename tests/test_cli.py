"""A newcomer's first hour (issue #17): --help everywhere, documented commands that work, one-line config errors,
runs that say what they do, and stale state that is named instead of silently reused."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import sample  # noqa: E402
import train_grpo  # noqa: E402
from nanor1 import checkpoint, sft  # noqa: E402
from nanor1.config import ConfigError, load_config  # noqa: E402
from nanor1.device import pick_device  # noqa: E402
from nanor1.rejection import RejectionConfig  # noqa: E402
from nanor1.sft import SFTConfig  # noqa: E402

SFT_TEST = os.path.join(ROOT, "configs", "sft_test.py")
GRPO_TEST = os.path.join(ROOT, "configs", "grpo_test.py")
ENTRY_POINTS = {"train_sft.py": SFTConfig, "train_grpo.py": train_grpo.GRPOConfig, "-m nanor1.rejection": RejectionConfig}


def run(*args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.parametrize("entry,flag", [("train_sft.py", "--help"), ("train_grpo.py", "-h"),
                                        ("-m nanor1.rejection", "--help"), ("sample.py", "--help")])
def test_every_entry_point_answers_help(entry, flag):
    out = run(*entry.split(), flag)
    assert out.returncode == 0, out.stderr
    if entry != "sample.py":  # the config keys, their defaults and one-line meanings
        assert re.search(r"--lr=\S+ +\S", out.stdout) or re.search(r"--sft\.lr=\S+ +\S", out.stdout), out.stdout[:500]
        assert "--out_dir=" in out.stdout


def test_a_bad_key_is_one_line_and_exit_2():
    out = run("train_sft.py", "--save_every=0")
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: config key 'save_every' must be >= 1, got 0"]


def documented_commands():
    """Every `python train_*.py ...` / `python -m nanor1.rejection ...` line in configs/ and README.md."""
    found = []
    for path in [os.path.join(ROOT, "README.md")] + sorted(
            os.path.join(ROOT, "configs", f) for f in os.listdir(os.path.join(ROOT, "configs"))):
        for line in open(path):
            m = re.search(r"python (train_sft\.py|train_grpo\.py|-m nanor1\.rejection)((?: [^#`\s][^\s`]*)*)", line)
            if m:
                placeholders = ("CONFIG.py", "...", "--help", "-h")  # --help has its own test
                args = [a for a in re.sub(r"\[[^\]]*\]", "", m.group(2)).split() if a not in placeholders]
                found.append((m.group(1), tuple(args), f"{os.path.basename(path)}"))
    return sorted(set(found))


@pytest.mark.parametrize("entry,args,where", documented_commands())
def test_documented_commands_load_their_config(entry, args, where):
    cls = ENTRY_POINTS[entry]
    cfg = load_config(cls, [os.path.join(ROOT, a) if a.endswith(".py") else a for a in args])
    if hasattr(cfg, "check"):
        cfg.check()


@pytest.mark.parametrize("args,message", [
    (["--save_every=0"], "'save_every' must be >= 1"),
    (["--tasks={'foo': 1}"], "unknown tasks \\['foo'\\]"),
    (["--lr=1e999"], "'lr' must be a finite number"),
    (["--lr=-1.0"], "'lr' must be > 0"),
    (["--model.attn_impl=cuda"], "attn_impl must be 'auto', 'triton' or 'torch'"),
    (["--dtype=fp16"], "'dtype' must be one of"),
])
def test_sft_config_values_are_range_checked(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, args).check()


@pytest.mark.parametrize("args,message", [(["--temperature=0.7"], "'temperature' must be 1.0"),
                                          (["--top_p=0.9"], "'top_k' must be 0 and top_p 1.0"),
                                          (["--top_k=5"], "'top_k' must be 0"),
                                          (["--sft.save_every=0"], "'save_every' must be >= 1")])
def test_grpo_refuses_a_sampler_that_is_not_the_policy(args, message):
    with pytest.raises(ConfigError, match=message):
        load_config(train_grpo.GRPOConfig, [GRPO_TEST, *args]).check()


def test_a_function_in_a_config_file_is_an_error_not_ignored(tmp_path):
    (tmp_path / "c.py").write_text("def _helper():\n    return 1\nlr = lambda: 1e-3\n")
    with pytest.raises(ConfigError, match="'lr' is set to a function"):
        load_config(SFTConfig, [str(tmp_path / "c.py")])


def test_the_task_set_for_grpo_reaches_the_cold_start():
    cfg = load_config(train_grpo.GRPOConfig, [GRPO_TEST, "--arithmetic.step_frac=0.25"]).check()
    assert cfg.sft.arithmetic.step_frac == 0.25


def sft_config(out, *overrides):
    return load_config(SFTConfig, [SFT_TEST, f"--out_dir={out}", "--max_steps=4", "--save_every=2", *overrides])


def test_a_run_says_what_it_does_and_names_stale_state(tmp_path, capsys):
    sft.train(sft_config(tmp_path / "a"))
    out = capsys.readouterr().out
    for needle in ("sft:", "device", "dtype", "model", "parameters", "outputs", "sft done", "held_out", "arithmetic acc",
                   "checkpoint", "plot"):
        assert needle in out, needle
    with pytest.raises(ConfigError, match="already holds a run \\(ckpt.pt at step 4\\)"):  # no silent overwrite
        sft.train(sft_config(tmp_path / "a"))
    with pytest.raises(ConfigError, match="model.dim: 32 -> 48"):  # resume with another model
        sft.train(sft_config(tmp_path / "a", "--resume=true", "--max_steps=6", "--model.dim=48"))
    with pytest.raises(ConfigError, match=r"tokenizer in .* was trained for another run \(vocab_size: 300 -> 320\)"):
        sft.train(sft_config(tmp_path / "b", f"--tokenizer_dir={tmp_path / 'a' / 'tokenizer'}", "--vocab_size=320"))
    sft.train(sft_config(tmp_path / "a", "--overwrite=true", "--vocab_size=320"))  # asked for: retrained
    assert checkpoint.load(tmp_path / "a")["tokenizer"] and json.load(
        open(tmp_path / "a" / "tokenizer" / "tokenizer.json"))["made_for"]["vocab_size"] == 320
    with pytest.raises(ConfigError, match="no checkpoint at"):
        sft.train(sft_config(tmp_path / "c", "--resume=true"))


def test_a_stale_cold_start_is_named_then_retrained_on_request(tmp_path):
    def cfg(*overrides):
        return load_config(train_grpo.GRPOConfig, [GRPO_TEST, f"--out_dir={tmp_path / 'grpo'}",
                                                   f"--sft.out_dir={tmp_path / 'sft'}", "--sft.max_steps=4",
                                                   *overrides]).check()
    path = train_grpo.cold_start(cfg())
    assert train_grpo.cold_start(cfg()) == path  # same settings: reused
    with pytest.raises(ConfigError, match="arithmetic.step_frac: 0.0 -> 0.5"):  # a task change reaches the cold start
        train_grpo.cold_start(cfg("--arithmetic.step_frac=0.5"))
    with pytest.raises(ConfigError, match="model.n_layers: 2 -> 3"):
        train_grpo.cold_start(cfg("--sft.model.n_layers=3"))
    train_grpo.cold_start(cfg("--arithmetic.step_frac=0.5", "--sft.overwrite=true"))
    assert checkpoint.load(path)["config"]["arithmetic"]["step_frac"] == 0.5


def test_resumed_run_keeps_one_metrics_row_per_step_and_final_checkpoint_precedes_eval(tmp_path, monkeypatch):
    out = tmp_path / "r"
    sft.train(sft_config(out))
    with open(out / "metrics.jsonl", "a") as f:  # a killed run logged past its checkpoint
        f.write(json.dumps({"step": 5, "loss": 1.0}) + "\n" + json.dumps({"step": 6, "loss": 1.0}) + "\n")

    def crash(*a, **k):
        raise RuntimeError("evaluation crashed")
    monkeypatch.setattr(sft, "evaluate_tasks", crash)
    with pytest.raises(RuntimeError, match="evaluation crashed"):
        sft.train(sft_config(out, "--resume=true", "--max_steps=6", "--log_every=1"))
    assert checkpoint.load(out)["step"] == 6  # saved before the final evaluation
    steps = [json.loads(line)["step"] for line in open(out / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 5  # rows 5, 6 of the killed run gone; 5 rewritten


def test_a_loss_that_turns_nan_stops_before_the_step(tmp_path):
    with pytest.raises(FloatingPointError, match="the loss is nan|the loss is inf"):
        sft.train(sft_config(tmp_path, "--lr=1e30", "--max_steps=20", "--save_every=100", "--warmup_steps=1"))
    assert not os.path.exists(tmp_path / "ckpt.pt")  # nothing non-finite was written


def test_sample_py_clamps_and_explains(tmp_path, capsys):
    sft.train(sft_config(tmp_path))  # max_seq_len 64
    sample.main([str(tmp_path), "--prompt", "What is 2 + 3?", "--device", "cpu"])  # default 128 new tokens: clamped
    assert "lowered to" in capsys.readouterr().err
    for bad in (["--count", "0"], ["--top_p", "0"], ["--n", "0"]):
        with pytest.raises(SystemExit) as e:
            sample.main([str(tmp_path), "--task", "arithmetic", *bad])
        assert e.value.code == 2
    torch.save({"model": {}}, tmp_path / "broken.pt")
    with pytest.raises(SystemExit, match="missing model_config, tokenizer"):
        sample.main([str(tmp_path / "broken.pt"), "--prompt", "hi"])


def test_triton_requested_on_cpu_after_gpu_compilation_says_what_to_do(monkeypatch):
    import importlib
    from nanor1 import kernels
    importlib.import_module("nanor1.kernels.attention")  # the kernels are defined (here: for the interpreter)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.mla_attention(*[torch.zeros(1, 1, 2, 8)] * 3, torch.zeros(1, 2, 8), torch.zeros(1, 1, 2, 8), 0.1,
                              impl="triton")


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert pick_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert pick_device("auto").type == "cpu"


def test_a_time_budget_stops_cleanly_and_resume_continues(tmp_path, capsys, monkeypatch):
    clock = iter(range(0, 10 ** 6, 20))  # every call to time.time() advances 20 s: the budget (1 min) ends soon
    monkeypatch.setattr(sft.time, "time", lambda: float(next(clock)))
    sft.train(sft_config(tmp_path, "--max_steps=50", "--save_every=100", "--time_budget_min=1"))
    out = capsys.readouterr().out
    step = checkpoint.load(tmp_path)["step"]
    assert 0 < step < 50 and "time budget of 1 min reached" in out
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert rows[-1]["step"] == step and "eval/arithmetic/acc" in rows[-1]  # evaluated and saved at the last step
    monkeypatch.undo()
    sft.train(sft_config(tmp_path, "--max_steps=50", "--save_every=100", "--resume=true"))
    assert checkpoint.load(tmp_path)["step"] == 50


def test_grpo_time_budget_counts_from_the_start_and_evaluates_at_the_end(tmp_path, capsys, monkeypatch):
    cfg = load_config(train_grpo.GRPOConfig, [GRPO_TEST, f"--out_dir={tmp_path / 'grpo'}",
                                              f"--sft.out_dir={tmp_path / 'sft'}", "--steps=50", "--eval_every=100",
                                              "--time_budget_min=2"]).check()
    train_grpo.cold_start(cfg)
    clock = iter(range(0, 10 ** 6, 30))
    monkeypatch.setattr(train_grpo.time, "time", lambda: float(next(clock)))
    train_grpo.train(cfg)
    step = checkpoint.load(tmp_path / "grpo")["step"]
    rows = [json.loads(line) for line in open(tmp_path / "grpo" / "metrics.jsonl")]
    assert 0 < step < 50 and rows[-1]["step"] == step and "eval/arithmetic/acc" in rows[-1]
    assert "time budget of 2 min reached" in capsys.readouterr().out
