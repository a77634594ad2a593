"""The two call sites the model uses: attention and the output loss.

impl: 'triton' (the hand-written kernels), 'torch' (kernels/reference.py), or 'auto' = triton on CUDA tensors,
torch elsewhere. On CPU the triton path still runs, through Triton's interpreter (TRITON_INTERPRET=1): slow,
but exact, which is how the tests check the kernels without a GPU.
"""
import os
import sys
import warnings

from nanor1.kernels import reference


def _use_triton(impl, tensor):
    if impl not in ("auto", "triton", "torch"):
        raise ValueError(f"kernel impl must be 'auto', 'triton' or 'torch', got {impl!r}")
    use = impl == "triton" or (impl == "auto" and tensor.is_cuda)
    if use and not tensor.is_cuda:
        _need_interpreter(tensor.device)
    return use


def _need_interpreter(device):
    """Triton kernels off CUDA run only in Triton's interpreter, which must be on before they are defined."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return
    if any(m in sys.modules for m in ("nanor1.kernels.attention", "nanor1.kernels.cross_entropy")):
        raise RuntimeError(f"the Triton kernels were compiled for the GPU and cannot run on {device}: use "
                           "attn_impl/loss_impl 'torch' (or 'auto'), or start Python with TRITON_INTERPRET=1")
    os.environ["TRITON_INTERPRET"] = "1"
    warnings.warn(f"Triton kernels requested on {device}: running them in Triton's interpreter (slow; exact)")


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
