# GSM8K end to end: SFT from scratch on the official train split's worked solutions, then GRPO on the
# correctness reward; metrics.jsonl holds test accuracy before (step 0) and after GRPO. A model this small
# trained from scratch gets few right (nanochat's 560M model reached 4.6% after SFT): this config shows the
# pipeline, not a strong score. One GPU:
#   python train_grpo.py configs/gsm8k.py [--gsm8k.path=/path/to/gsm8k]
out_dir = "out/gsm8k/grpo"
task = "gsm8k"
gsm8k = dict(path="../shared/data/gsm8k")
sft = dict(
    out_dir="out/gsm8k/sft", tasks={"gsm8k": 1.0}, gsm8k=gsm8k, n_examples=7473, vocab_size=4096, max_len=512,
    model=dict(vocab_size=4096, dim=384, n_layers=6, n_heads=6, max_seq_len=768, q_lora_rank=0,
               kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64, n_dense_layers=1,
               inter_dim=1024, n_routed_experts=16, n_shared_experts=1, n_activated_experts=4, n_expert_groups=4,
               n_limited_groups=2, moe_inter_dim=192, route_scale=2.5, mtp_depth=1),
    batch_size=64, max_steps=3000, lr=1e-3, warmup_steps=100, log_every=25, eval_every=1000, eval_problems=200,
    eval_max_new_tokens=256, save_every=500,
)
steps = 100
prompts_per_step = 32
group_size = 8
max_new_tokens = 256
lr = 5e-5
beta = 0.01
loss_norm = "token"
eval_every = 25
eval_problems = 500
eval_max_new_tokens = 256
save_every = 25
