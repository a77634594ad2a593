# Model size "gpu": about 40M total / 20M active parameters, for one GPU (the tiny all-features shape of
# ../shared/REFERENCE.md: dim 384, 6 layers with 1 dense, kv_lora 128, nope/rope/v 64/32/64, 16+1 experts top-4).
model = dict(
    vocab_size=4096, dim=384, n_layers=6, n_heads=6, max_seq_len=1024,
    q_lora_rank=0, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
    n_dense_layers=1, inter_dim=1024,
    n_routed_experts=16, n_shared_experts=1, n_activated_experts=4, n_expert_groups=4, n_limited_groups=2,
    moe_inter_dim=192, route_scale=2.5,
    mtp_depth=1, mtp_lambda=0.3,
)
