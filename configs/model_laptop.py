# Model size "laptop": about 2M parameters, trains on 2 CPU cores in minutes. Every feature on.
model = dict(
    vocab_size=1024, dim=128, n_layers=4, n_heads=4, max_seq_len=512,
    q_lora_rank=0, kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
    n_dense_layers=1, inter_dim=384,
    n_routed_experts=8, n_shared_experts=1, n_activated_experts=2, n_expert_groups=2, n_limited_groups=2,
    moe_inter_dim=64, route_scale=1.0,
    mtp_depth=1, mtp_lambda=0.3,
)
