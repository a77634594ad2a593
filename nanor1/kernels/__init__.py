"""The two call sites the model uses: attention and the output loss.

impl: 'triton' (the hand-written kernels), 'torch' (kernels/reference.py), or 'auto' = triton on CUDA tensors,
torch elsewhere. On CPU the triton path still runs, through Triton's interpreter (TRITON_INTERPRET=1): slow,
but exact, which is how the tests check the kernels without a GPU.
"""
from nanor1.kernels import reference


def _use_triton(impl, tensor):
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"kernel impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    return impl == "triton" or (impl == "auto" and tensor.is_cuda)


def mla_attention(q_nope, q_rope, k_nope, k_rope, v, scale, start=None, impl="auto"):
    """See reference.mla_attention for shapes and meaning."""
    if _use_triton(impl, q_nope):
        from nanor1.kernels.attention import flash_mla_attention
        return flash_mla_attention(q_nope, q_rope, k_nope, k_rope, v, scale, start)
    return reference.mla_attention(q_nope, q_rope, k_nope, k_rope, v, scale, start)


def linear_cross_entropy(hidden, weight, targets, ignore_index=-100, impl="auto"):
    """See reference.linear_cross_entropy: per-token loss (N,) fp32; -loss is the target's log-prob."""
    if _use_triton(impl, hidden):
        from nanor1.kernels.cross_entropy import fused_linear_cross_entropy
        return fused_linear_cross_entropy(hidden, weight, targets, ignore_index)
    return reference.linear_cross_entropy(hidden, weight, targets, ignore_index)
