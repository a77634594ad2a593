import json
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_grpo  # noqa: E402
from nanor1 import checkpoint  # noqa: E402
from nanor1.config import ConfigError, load_config  # noqa: E402
from nanor1.tasks.verify import Rewards, score  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "grpo_test.py")


def config(tmp_path, *overrides):
    return load_config(train_grpo.GRPOConfig, [CONFIG, f"--out_dir={tmp_path / 'grpo'}",
                                               f"--sft.out_dir={tmp_path / 'sft'}", *overrides]).check()


class SaySeven:
    """A trivially learnable task: whatever the question, the right answer is 7."""
    name = "say7"

    def problems(self, split, n, seed):
        return [{"id": i, "a": i % 10, "b": (3 * i) % 10, "op": "+"} for i in range(n)]

    def prompt(self, problem):
        return f"What is {problem['a']} + {problem['b']}?"

    def score(self, problem, text):
        return score(text, lambda answer: answer == "7", Rewards())


def test_end_to_end_cold_start_then_grpo_then_resume(tmp_path):
    cfg = config(tmp_path)
    train_grpo.train(cfg)
    assert checkpoint.load(tmp_path / "sft")["step"] == 30  # the cold start was trained first
    rows = [json.loads(line) for line in open(tmp_path / "grpo" / "metrics.jsonl")]
    assert rows[0]["step"] == 0 and "eval/arithmetic/acc" in rows[0]
    keys = {"reward", "accuracy", "length", "length_min", "length_max", "truncated", "zero_variance_groups", "kl",
            "entropy", "clip_frac", "grad_norm", "gen_tokens_per_s", "step_by_step"}  # the last: the task's traits
    assert keys <= set(rows[1]) and 0 <= rows[1]["step_by_step"] <= 1 and rows[-1]["step"] == 3 and "eval/arithmetic/acc" in rows[-1]
    assert rows[1]["kl"] >= 0.0
    # resume: 2 more steps from the checkpoint at step 3
    train_grpo.train(config(tmp_path, "--resume=true", "--steps=5"))
    assert checkpoint.load(tmp_path / "grpo")["step"] == 5


def test_grpo_raises_the_reward_on_a_trivially_learnable_task(tmp_path):
    cfg = config(tmp_path, "--sft.max_steps=60", "--lr=3e-3", "--prompts_per_step=8", "--group_size=8",
                 "--beta=0.0", "--mu=1", "--loss_norm=token")
    model, tok, _ = checkpoint.load_model(train_grpo.cold_start(cfg))
    optimizer = train_grpo.make_optimizer(model, cfg, torch.device("cpu"))
    torch.manual_seed(0)
    rewards = []
    for step in range(25):
        metrics = train_grpo.grpo_step(cfg, model, None, optimizer, tok, SaySeven(), step, torch.device("cpu"))
        rewards.append(metrics["accuracy"])
    before, after = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert after > before + 0.3, rewards


def test_build_batch_puts_the_loss_on_the_response_only():
    inputs, targets, mask = train_grpo.build_batch([[1, 2, 3], [4]], [[7, 8], [9, 10, 11]], 0, "cpu")
    assert inputs.tolist() == [[1, 2, 3, 7], [4, 9, 10, 0]]
    assert targets.tolist() == [[-100, -100, 7, 8], [9, 10, 11, -100]]
    assert mask.sum().item() == 5


def test_bad_grpo_config_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="loss_norm"):
        config(tmp_path, "--loss_norm=mean")
    with pytest.raises(ConfigError, match="group_size"):
        config(tmp_path, "--group_size=1")


@pytest.mark.parametrize("name", ["countdown", "countdown_laptop", "arithmetic", "gsm8k", "grpo_test"])
def test_every_grpo_config_loads(name):
    cfg = load_config(train_grpo.GRPOConfig, [os.path.join(ROOT, "configs", f"{name}.py")]).check()
    assert cfg.sft.tasks.get(cfg.task, 0) > 0  # the cold start is trained on the task GRPO optimises


def test_gsm8k_config_runs_end_to_end_at_tiny_size(tmp_path, gsm8k_path):
    tiny = ["--sft.model.dim=32", "--sft.model.n_layers=2", "--sft.model.n_heads=2", "--sft.model.kv_lora_rank=16",
            "--sft.model.qk_nope_head_dim=8", "--sft.model.qk_rope_head_dim=8", "--sft.model.v_head_dim=8",
            "--sft.model.inter_dim=64", "--sft.model.n_routed_experts=4", "--sft.model.n_expert_groups=1",
            "--sft.model.n_limited_groups=1", "--sft.model.n_activated_experts=2", "--sft.model.moe_inter_dim=16",
            "--sft.vocab_size=400", "--sft.n_examples=200", "--sft.max_steps=3", "--sft.batch_size=8",
            "--sft.eval_problems=2", "--sft.eval_max_new_tokens=8", "--sft.progress=false"]
    cfg = load_config(train_grpo.GRPOConfig, [
        os.path.join(ROOT, "configs", "gsm8k.py"), f"--out_dir={tmp_path / 'grpo'}", f"--sft.out_dir={tmp_path / 'sft'}",
        f"--gsm8k.path={gsm8k_path}", f"--sft.gsm8k.path={gsm8k_path}", *tiny, "--steps=1", "--prompts_per_step=2",
        "--group_size=2", "--max_new_tokens=8", "--eval_problems=4", "--eval_max_new_tokens=8",
        "--progress=false"]).check()
    train_grpo.train(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "grpo" / "metrics.jsonl")]
    assert "eval/gsm8k/acc" in rows[0] and "eval/gsm8k/acc" in rows[-1] and rows[-1]["step"] == 1


def test_trimmed_micro_batches_give_the_same_logprobs_as_one_full_batch(tmp_path):
    cfg = config(tmp_path)
    model, tok, _ = checkpoint.load_model(train_grpo.cold_start(cfg))
    prompts = [tok.render_prompt(f"What is {i} + {i}?") for i in range(6)]
    responses = [tok.encode_response("<think></think><answer>" + "1" * (1 + 3 * i) + "</answer>") for i in range(6)]
    inputs, targets, _ = train_grpo.build_batch(prompts, responses, tok.pad_id, "cpu")
    full = train_grpo.token_logprobs(model, inputs, targets, micro_batch=64)
    trimmed = train_grpo.token_logprobs(model, inputs, targets, micro_batch=2)  # 3 micro-batches, each cut
    assert [T for _, T in train_grpo.micro_batches(targets, 2)] != [targets.size(1)] * 3
    assert torch.allclose(full, trimmed, atol=1e-5)


def test_one_pass_update_equals_the_first_update_with_a_separate_pi_old_forward(tmp_path):
    """mu = 1 takes pi_old from the update's own forward (detached) instead of a second forward: the gradient must
    be the one the mu = 2 path applies first, where pi_old comes from token_logprobs (ratio 1 there too)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from grpo_ddp_worker import fixed_update
    ckpt = train_grpo.cold_start(config(tmp_path))
    for norm in ("sequence", "token"):
        args = [CONFIG, "--micro_batch=3", f"--loss_norm={norm}", "--beta=0.0", "--lr=1e-3"]
        _, one_pass = fixed_update(args + ["--mu=1"], ckpt, range(8), 1, 0)
        _, two_pass = fixed_update(args + ["--mu=2"], ckpt, range(8), 1, 0)
        assert len(one_pass) == 1 and len(two_pass) == 2
        for name, g in one_pass[0].items():
            assert g.abs().max() > 0 or two_pass[0][name].abs().max() == 0, name
            assert torch.allclose(g, two_pass[0][name], atol=1e-7, rtol=1e-5), (norm, name)
        assert sum(g.abs().max() > 1e-6 for g in one_pass[0].values()) > 10  # a real update, not zeros


def test_policy_update_reads_the_device_once_per_pass_not_once_per_micro_batch(tmp_path, monkeypatch):
    """On a GPU every number read back to Python (.item(), float(), .tolist(), if tensor) waits for the queue to
    drain. The update's own code and the model's forward must not read back per micro-batch: 8 micro-batches of
    one row make as many reads as one micro-batch of 8 rows. (The CPU's MoE loop path reads the expert sizes
    per layer by design; the GPU's grouped matmul does not, so sorted_dispatch is not counted.)"""
    import traceback
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from grpo_ddp_worker import fixed_update
    ckpt = train_grpo.cold_start(config(tmp_path))
    reads, counting = [], [False]
    for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
        def read(self, *args, _original=getattr(torch.Tensor, name), **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            if counting[0] and os.path.basename(caller.filename) in ("train_grpo.py", "grpo.py", "model.py") \
                    and caller.name != "sorted_dispatch":
                reads.append(f"{os.path.basename(caller.filename)}:{caller.lineno}")
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, read)
    update = train_grpo.policy_update

    def counted_update(*args, **kwargs):
        counting[0] = True
        try:
            return update(*args, **kwargs)
        finally:
            counting[0] = False
    monkeypatch.setattr(train_grpo, "policy_update", counted_update)
    per_micro_batch = {}
    for micro_batch in (1, 8):
        reads.clear()
        fixed_update([CONFIG, f"--micro_batch={micro_batch}", "--mu=2", "--beta=0.0"], ckpt,
                     range(8), 1, 0)
        per_micro_batch[micro_batch] = sorted(reads)
    assert per_micro_batch[1] == per_micro_batch[8], per_micro_batch
    assert 0 < len(per_micro_batch[1]) <= 10  # a few reads per pass and per update, not ~9 per micro-batch


class AlwaysWrong(SaySeven):
    """Every sample scores the same: with dynamic sampling every group is dropped."""
    def score(self, problem, text):
        return score(text, lambda answer: False, Rewards(format=0.0))


def test_a_step_with_every_group_dropped_logs_nulls_not_zeros(tmp_path):
    cfg = config(tmp_path, "--dynamic_sampling=true", "--beta=0.0")
    model, tok, _ = checkpoint.load_model(train_grpo.cold_start(cfg))
    optimizer = train_grpo.make_optimizer(model, cfg, torch.device("cpu"))
    m = train_grpo.grpo_step(cfg, model, None, optimizer, tok, AlwaysWrong(), 0, torch.device("cpu"))
    assert m["updated"] == 0 and m["zero_variance_groups"] == 1.0
    assert all(m[k] is None for k in ("loss", "kl", "entropy", "clip_frac", "grad_norm", "ratio"))
    json.dumps(m)  # null in metrics.jsonl


def test_grpo_update_under_torchrun_equals_the_single_process_update(tmp_path):
    """2 gloo processes, each with half of a fixed batch's rows (the token normaliser counts both ranks' tokens,
    the gradients are summed) make the same update as one process with all rows."""
    import socket
    import subprocess
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from grpo_ddp_worker import fixed_update
    ckpt = train_grpo.cold_start(config(tmp_path))
    cfg_args = [CONFIG, "--mu=2", "--micro_batch=2", "--loss_norm=token", "--beta=0.0", "--lr=1e-3"]
    model, single_grads = fixed_update(cfg_args, ckpt, range(8), 1, 0)
    single = model.state_dict()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                          "--master_addr=127.0.0.1", os.path.join(ROOT, "tests", "grpo_ddp_worker.py"), ckpt,
                          str(tmp_path / "ddp.pt"), *cfg_args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert len(ddp["grads"]) == len(single_grads) == 2  # mu = 2 inner updates
    for mine, theirs in zip(single_grads, ddp["grads"]):  # the gradients: equal up to summation order
        for name, g in mine.items():
            assert torch.allclose(g, theirs[name], atol=1e-7, rtol=1e-4), (name, (g - theirs[name]).abs().max())
    before = checkpoint.load(ckpt)["model"]
    for name, value in single.items():  # the weights too (Adam divides by sqrt(v): a little noise, 1e-3 steps)
        assert torch.allclose(value, ddp["params"][name], atol=5e-5), name
    assert sum((v - before[k]).abs().max() > 1e-4 for k, v in single.items()) > 10  # the update moved weights


def test_countdown_gpu_config_dry_run_on_cpu(tmp_path):
    """configs/countdown.py (the one-GPU aha) end to end at reduced size on the CPU, in the GPU's precision
    (bf16 autocast) and with the static-shape sampler: cold start, 2 GRPO steps, evaluation, checkpoint."""
    tiny = ["--sft.model.dim=32", "--sft.model.n_layers=2", "--sft.model.n_heads=2", "--sft.model.kv_lora_rank=16",
            "--sft.model.qk_nope_head_dim=8", "--sft.model.qk_rope_head_dim=8", "--sft.model.v_head_dim=8",
            "--sft.model.inter_dim=64", "--sft.model.n_routed_experts=4", "--sft.model.n_expert_groups=2",
            "--sft.model.n_limited_groups=1", "--sft.model.n_activated_experts=2", "--sft.model.moe_inter_dim=16",
            "--sft.model.max_seq_len=160", "--sft.vocab_size=300", "--sft.n_examples=300", "--sft.max_len=120",
            "--sft.max_steps=4", "--sft.batch_size=8", "--sft.eval_problems=2", "--sft.eval_max_new_tokens=8",
            "--sft.progress=false", "--sft.dtype=bf16"]
    cfg = load_config(train_grpo.GRPOConfig, [
        os.path.join(ROOT, "configs", "countdown.py"), f"--out_dir={tmp_path / 'grpo'}",
        f"--sft.out_dir={tmp_path / 'sft'}", *tiny, "--steps=2", "--prompts_per_step=2", "--group_size=2",
        "--max_new_tokens=16", "--micro_batch=4", "--eval_every=2", "--eval_problems=4", "--eval_max_new_tokens=16",
        "--dtype=bf16", "--decode=static", "--progress=false", "--mask_truncated=false"]).check()
    train_grpo.train(cfg)
    rows = [json.loads(line) for line in open(tmp_path / "grpo" / "metrics.jsonl")]
    assert rows[-1]["step"] == 2 and "eval/countdown/acc" in rows[-1]
    assert all(r["ratio_min"] == 1.0 == r["ratio_max"] for r in rows if r.get("ratio_min") is not None)
    model, _, _ = checkpoint.load_model(str(tmp_path / "grpo"))
    assert model.cfg.dim == 32
