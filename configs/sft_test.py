# A seconds-long SFT run for tests and smoke checks: test-size model, arithmetic.
out_dir = "out/sft_test"
tasks = {"arithmetic": 1.0}
arithmetic = dict(min_digits=1, max_digits=2, step_frac=0.0)
n_examples = 400
vocab_size = 300
max_len = 48
model = dict(vocab_size=300, dim=32, n_layers=2, n_heads=2, max_seq_len=64,
             q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16,
             n_dense_layers=1, inter_dim=64, n_routed_experts=4, n_shared_experts=1, n_activated_experts=2,
             n_expert_groups=2, n_limited_groups=1, moe_inter_dim=16, mtp_depth=1)
batch_size = 16
max_steps = 20
lr = 3e-3
warmup_steps = 5
log_every = 5
eval_every = 0
eval_problems = 8
eval_max_new_tokens = 12
save_every = 10
progress = False
