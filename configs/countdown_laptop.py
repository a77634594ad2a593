# The Countdown "aha" on a CPU laptop (2 cores, ~35 min): SFT cold start on search traces that give up after
# each dead end with probability 0.3 (a geometric spread of patience budgets), then 200 GRPO steps with the
# correctness reward. Test problems are unseen (numbers, target) pairs; unlike the GPU config no target value
# is held out, which a 1.6M-parameter model does not generalise to.
#   python train_grpo.py configs/countdown_laptop.py
# Measured (results/countdown_laptop/): gives up 0.34 -> 0.01, held-out pass@1 0.573 -> 0.624, mean length
# 31 -> 39 tokens (a modest rise: most of the extra search ends in slips at this model size).
out_dir = "out/countdown_laptop/grpo"
task = "countdown"
countdown = dict(n_numbers=(3,), min_number=1, max_number=9, min_target=10, max_target=30, max_value=60,
                 give_up=0.3, heldout_frac=0.0)
_model = dict(
    dim=128, n_layers=4, n_heads=4, max_seq_len=320,
    q_lora_rank=0, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    n_dense_layers=1, inter_dim=384,
    n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=2, n_limited_groups=2,
    moe_inter_dim=64, mtp_depth=1, mtp_lambda=0.3,
)
_eval = dict(eval_problems=100, eval_samples=4, eval_temperature=1.0, eval_max_new_tokens=200, eval_batch_size=200)
sft = dict(
    out_dir="out/countdown_laptop/sft", tasks={"countdown": 1.0}, countdown=countdown, n_examples=60000,
    vocab_size=512, max_len=200, model=_model, batch_size=64, max_steps=1800, lr=3e-3, warmup_steps=50,
    log_every=25, eval_every=250, save_every=250, **_eval,
)
prompts_per_step = 32
group_size = 8
max_new_tokens = 200
temperature = 1.0
lr = 2e-4
warmup_steps = 5
beta = 0.0
mu = 1
loss_norm = "token"
eps_low = 0.2
eps_high = 0.28
dynamic_sampling = True  # DAPO: groups whose 8 rewards are all equal carry no signal and are dropped
mask_truncated = False  # a response cut at max_new_tokens is a loop here, not a long thought: it gets reward 0
steps = 200
eval_every = 20
save_every = 20
eval_problems = 200
eval_samples = 4
eval_temperature = 1.0
eval_max_new_tokens = 200
eval_batch_size = 200
