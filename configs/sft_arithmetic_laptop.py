# SFT from scratch on 1-2 digit addition and subtraction (step-by-step targets), the laptop-size model (~1.6M params).
# A few minutes on 2 CPU cores:  python train_sft.py configs/sft_arithmetic_laptop.py
# then:                          python sample.py out/sft_arithmetic_laptop --task arithmetic
out_dir = "out/sft_arithmetic_laptop"
tasks = {"arithmetic": 1.0}
arithmetic = dict(min_digits=1, max_digits=2, ops=("+", "-"), step_frac=1.0)
n_examples = 30000
vocab_size = 512
max_len = 128
model = dict(
    dim=128, n_layers=4, n_heads=4, max_seq_len=256,
    q_lora_rank=0, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    n_dense_layers=1, inter_dim=384,
    n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=2, n_limited_groups=2,
    moe_inter_dim=64, mtp_depth=1, mtp_lambda=0.3,
)
batch_size = 64
max_steps = 1200
lr = 3e-3
warmup_steps = 50
log_every = 25
eval_every = 300
eval_problems = 100
eval_max_new_tokens = 80
save_every = 300
