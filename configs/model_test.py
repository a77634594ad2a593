# Model size "test": a forward in milliseconds on CPU, every feature on (q_lora, group routing, 2 MTP depths).
# Used by the tests; combine with an SFT config:  python train_sft.py configs/sft_test.py configs/model_test.py
model = dict(
    vocab_size=512, dim=32, n_layers=2, n_heads=2, max_seq_len=256,
    q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=8, v_head_dim=16,
    n_dense_layers=1, inter_dim=64,
    n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, n_expert_groups=2, n_limited_groups=1,
    moe_inter_dim=16, route_scale=1.0,
    mtp_depth=2, mtp_lambda=0.3,
)
