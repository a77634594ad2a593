# Arithmetic under GRPO, the "aha" on a laptop: the cold start sees 70% step-by-step and 30% direct targets
# (step_frac=0.7) and ends up answering most problems directly, often wrongly once an operand has 2 digits; the
# correctness reward moves the policy to the step-by-step chains (longer responses, more right answers).
# Laptop-size model, ~6 minutes on 2 CPU cores:   python train_grpo.py configs/arithmetic.py
# Measured on all 2,043 test problems x 4 (results/arithmetic/): pass@1 0.381 -> 0.553 (+0.172, 95% CI
# [+0.153, +0.190]), mean length 15.5 -> 32.9 tokens, step by step 0.37 -> 0.99.
out_dir = "out/arithmetic/grpo"
task = "arithmetic"
arithmetic = dict(min_digits=1, max_digits=2, ops=("+", "-"), step_frac=0.7)
_eval = dict(eval_problems=200, eval_samples=4, eval_temperature=1.0, eval_max_new_tokens=80, eval_batch_size=400)
sft = dict(
    out_dir="out/arithmetic/sft", tasks={"arithmetic": 1.0}, arithmetic=arithmetic, n_examples=40000,
    vocab_size=512, max_len=128,
    model=dict(dim=128, n_layers=4, n_heads=4, max_seq_len=256, q_lora_rank=0, kv_lora_rank=32,
               qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32, n_dense_layers=1, inter_dim=384,
               n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=2,
               n_limited_groups=2, moe_inter_dim=64, mtp_depth=1),
    batch_size=64, max_steps=2000, lr=3e-3, warmup_steps=50, log_every=25, eval_every=500, save_every=500, **_eval,
)
steps = 60
prompts_per_step = 32
group_size = 8
max_new_tokens = 80
lr = 5e-4
loss_norm = "token"
dynamic_sampling = True
eval_every = 10
save_every = 20
eval_problems = 200
eval_samples = 4  # held-out accuracy = mean over 4 samples at temperature 1 (the policy as it samples)
eval_temperature = 1.0
eval_max_new_tokens = 80
eval_batch_size = 400
