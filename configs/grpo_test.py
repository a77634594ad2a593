# A seconds-long end-to-end GRPO run for tests: tiny SFT cold start on 1-digit addition, then a few GRPO steps.
out_dir = "out/grpo_test"
task = "arithmetic"
arithmetic = dict(min_digits=1, max_digits=1, ops=("+",), step_frac=0.0)
sft = dict(
    out_dir="out/grpo_test_sft", tasks={"arithmetic": 1.0}, n_examples=400, vocab_size=300, max_len=48,
    arithmetic=dict(min_digits=1, max_digits=1, ops=("+",), step_frac=0.0),
    model=dict(vocab_size=300, dim=32, n_layers=2, n_heads=2, max_seq_len=64, q_lora_rank=0, kv_lora_rank=16,
               qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16, n_dense_layers=1, inter_dim=64,
               n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, n_expert_groups=1,
               n_limited_groups=1, moe_inter_dim=16, mtp_depth=1),
    batch_size=16, max_steps=30, lr=1e-2, warmup_steps=5, log_every=10, eval_every=0, eval_problems=8,
    eval_max_new_tokens=12, save_every=30, progress=False,
)
steps = 3
prompts_per_step = 4
group_size = 4
max_new_tokens = 12
lr = 1e-3
beta = 0.04
mu = 2
eval_every = 3
eval_problems = 8
eval_max_new_tokens = 12
save_every = 2
progress = False
