# The "aha" reproduction on one GPU: SFT cold start on Countdown search traces that give up after each dead
# end with probability 0.3 (a geometric spread of patience budgets), then GRPO with the correctness reward. Everything, tokenizer and cold start included:
#   python train_grpo.py configs/countdown.py
# The GPU-size model (~31M total / 13M active). Target: under 10 minutes on one H100 (not yet measured;
# the measured reproduction is the CPU-laptop one, configs/countdown_laptop.py).
out_dir = "out/countdown/grpo"
task = "countdown"
countdown = dict(n_numbers=(3, 4), min_number=1, max_number=12, min_target=10, max_target=50, max_value=100,
                 give_up=0.3)
_model = dict(
    vocab_size=4096, dim=384, n_layers=6, n_heads=6, max_seq_len=1024,
    q_lora_rank=0, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
    n_dense_layers=1, inter_dim=1024,
    n_routed_experts=16, n_shared_experts=1, n_activated_experts=4, n_expert_groups=4, n_limited_groups=2,
    moe_inter_dim=192, route_scale=2.5, mtp_depth=1, mtp_lambda=0.3,
)
sft = dict(
    out_dir="out/countdown/sft", tasks={"countdown": 1.0}, countdown=countdown, n_examples=100000,
    vocab_size=1024, max_len=768, model=_model, batch_size=128, max_steps=2000, lr=1e-3, warmup_steps=100,
    log_every=25, eval_every=500, eval_problems=200, eval_samples=4, eval_temperature=1.0, eval_max_new_tokens=768,
    save_every=250,
)
steps = 150
prompts_per_step = 64
group_size = 8
max_new_tokens = 768
temperature = 1.0
lr = 1e-4
warmup_steps = 5
beta = 0.0
mu = 1
loss_norm = "token"
eps_low = 0.2
eps_high = 0.28  # DAPO clip-higher; inert with mu = 1 (every ratio is 1 at the single update), kept for mu > 1
micro_batch = 128
moe_bias_update = False  # routing biases frozen during RL, as DeepSeek-V3 froze them (gamma = 0) after pre-training
eval_every = 10
eval_problems = 500
eval_samples = 4  # held-out accuracy = mean over 4 samples at temperature 1 (the policy as it samples)
eval_temperature = 1.0
eval_max_new_tokens = 768
eval_batch_size = 256
save_every = 25
