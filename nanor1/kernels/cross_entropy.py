"""Fused linear + cross-entropy with per-token log-probs, in Triton.

The full (tokens x vocab) logits never exist: rows are processed in chunks, so at most (chunk x vocab)
logits live at a time (the idea of Liger-Kernel's fused linear CE; chunk chosen so a chunk of logits is
about the size of the hidden states).
  forward:  per chunk, logits = h W^T (a matmul), then a Triton program per row runs an online
            log-sum-exp over vocab blocks: loss = lse - logit[target]; the LSE is saved (N floats).
  backward: per chunk, recompute the logits, a Triton program per row overwrites them in place with
            dlogits = (softmax - onehot(target)) * grad_loss[row], then dh = dlogits W and dW += dlogits^T h.
Per-token outputs (not a mean) because GRPO weights every token by its own advantage; -loss is the
target's log-prob, so GRPO's ratio and KL use this same kernel. Ignored rows give 0 loss and 0 gradient.

Reference: kernels/reference.py::linear_cross_entropy. Tests: tests/test_kernels.py.
"""
import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _ce_fwd(Logits, Targets, Loss, LSE, s_row, V, ignore_index, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(Targets + row)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)  # per-lane running max and sum (online LSE)
    s = tl.zeros([BLOCK_V], tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(Logits + row * s_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.exp(x - m_safe)
        m = m_new
    m_row = tl.max(m, 0)
    lse = m_row + tl.log(tl.sum(s * tl.exp(m - m_row), 0))
    ignored = target == ignore_index
    safe_target = tl.where(ignored, 0, target)
    x_target = tl.load(Logits + row * s_row + safe_target).to(tl.float32)
    tl.store(Loss + row, tl.where(ignored, 0.0, lse - x_target))
    tl.store(LSE + row, lse)


@triton.jit
def _ce_bwd(Logits, Targets, LSE, GradLoss, s_row, V, ignore_index, BLOCK_V: tl.constexpr):
    """In place: logits[row] <- (softmax(logits[row]) - onehot(target)) * grad_loss[row]."""
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(Targets + row)
    lse = tl.load(LSE + row)
    g = tl.load(GradLoss + row)
    g = tl.where(target == ignore_index, 0.0, g)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        x = tl.load(Logits + row * s_row + cols, mask=cols < V, other=0.0).to(tl.float32)
        d = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
        tl.store(Logits + row * s_row + cols, (d * g).to(Logits.dtype.element_ty), mask=cols < V)


def _block_v(V):
    return min(1024 if _INTERPRET else 4096, triton.next_power_of_2(V))


def chunk_rows(N, V, D):
    """Rows per chunk: logits of a chunk about as large as the hidden states (Liger's rule), a power of 2."""
    return min(triton.next_power_of_2(N), max(16, triton.next_power_of_2(triton.cdiv(N, triton.cdiv(V, D)))))


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, ignore_index, chunk):
        N, D = hidden.shape
        V = weight.shape[0]
        if weight.shape[1] != D or targets.shape != (N,):
            raise ValueError(f"fused_linear_cross_entropy: hidden {tuple(hidden.shape)}, weight "
                             f"{tuple(weight.shape)}, targets {tuple(targets.shape)} do not fit (N,D) (V,D) (N,)")
        hidden, targets = hidden.contiguous(), targets.contiguous()
        loss = torch.empty(N, dtype=torch.float32, device=hidden.device)
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        chunk = chunk or chunk_rows(N, V, D)
        for r0 in range(0, N, chunk):
            rows = slice(r0, min(r0 + chunk, N))
            logits = hidden[rows] @ weight.t()  # (chunk, V), the only logits that exist at a time
            _ce_fwd[(logits.shape[0],)](logits, targets[rows], loss[rows], lse[rows], logits.stride(0), V,
                                        ignore_index, BLOCK_V=_block_v(V))
        ctx.save_for_backward(hidden, weight, targets, lse)
        ctx.ignore_index, ctx.chunk = ignore_index, chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        hidden, weight, targets, lse = ctx.saved_tensors
        N, V = hidden.shape[0], weight.shape[0]
        grad_loss = grad_loss.float().contiguous()
        d_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) \
            if ctx.needs_input_grad[1] else None
        for r0 in range(0, N, ctx.chunk):
            rows = slice(r0, min(r0 + ctx.chunk, N))
            logits = hidden[rows] @ weight.t()  # recomputed rather than stored
            _ce_bwd[(logits.shape[0],)](logits, targets[rows], lse[rows], grad_loss[rows], logits.stride(0), V,
                                        ctx.ignore_index, BLOCK_V=_block_v(V))
            if d_hidden is not None:
                d_hidden[rows] = logits @ weight
            if d_weight is not None:
                d_weight += (logits.t() @ hidden[rows]).float()
        return d_hidden, (d_weight.to(weight.dtype) if d_weight is not None else None), None, None, None


def fused_linear_cross_entropy(hidden, weight, targets, ignore_index=-100, chunk=None):
    """Same contract as reference.linear_cross_entropy: (N, D), (V, D), (N,) -> per-token loss (N,) fp32."""
    return _FusedLinearCrossEntropy.apply(hidden, weight, targets, ignore_index, chunk)
