# A seconds-long rejection-sampling round for tests: tiny SFT start on 1-digit addition, one round.
out_dir = "out/rejection_test"
tasks = ("arithmetic",)
sft = dict(
    out_dir="out/rejection_test_sft", tasks={"arithmetic": 1.0}, n_examples=600, vocab_size=300, max_len=48,
    arithmetic=dict(min_digits=1, max_digits=1, ops=("+",), step_frac=0.0),
    model=dict(vocab_size=300, dim=48, n_layers=2, n_heads=2, max_seq_len=64, q_lora_rank=0, kv_lora_rank=16,
               qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16, n_dense_layers=1, inter_dim=96,
               n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, n_expert_groups=1,
               n_limited_groups=1, moe_inter_dim=24, mtp_depth=1),
    batch_size=32, max_steps=80, lr=1e-2, warmup_steps=5, log_every=20, eval_every=0, eval_problems=8,
    eval_max_new_tokens=12, save_every=80, progress=False,
)
rounds = 1
prompts_per_round = 48
n_samples = 8
max_new_tokens = 12
finetune_steps = 5
eval_problems = 16
label_prompts = 32
report_prompts = 16
