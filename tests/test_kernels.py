"""Kernels against kernels/reference.py. On CPU through Triton's interpreter (fp32, fp16); on CUDA bf16 too.
Tolerances: fp32 ~1e-5 forward and 1e-4 gradients; fp16/bf16 an error budget against fp32 truth:
|kernel - truth| <= |torch in that dtype - truth| + 1e-2."""
import pytest
import torch

pytest.importorskip("triton")  # Linux only (pyproject); elsewhere the model runs its plain-torch path

from nanor1.kernels import reference  # noqa: E402
from nanor1.kernels.attention import flash_mla_attention  # noqa: E402
from nanor1.kernels.cross_entropy import fused_linear_cross_entropy  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])


def check(out, truth, torch_low, dtype, fwd_tol):
    """fp32: absolute tolerance. Low precision: the error budget against the fp32 truth."""
    err = (out.float() - truth.float()).abs().max().item()
    if dtype == torch.float32:
        assert err <= fwd_tol, err
    else:
        budget = (torch_low.float() - truth.float()).abs().max().item() + 1e-2
        assert err <= budget, (err, budget)


ATTN_SHAPES = [  # (B, H, T, dn, dr, dv, start)
    (1, 1, 1, 16, 16, 32, None),  # T = 1
    (2, 3, 37, 16, 16, 32, None),  # T not a multiple of the block, 3 heads
    (1, 1, 70, 64, 32, 64, None),  # several blocks, the 64/32/64 head shape
    (3, 2, 21, 64, 32, 64, [0, 7, 21]),  # left padding; the last row is all padding
    (2, 1, 19, 24, 8, 40, [2, 18]),  # dims that are not powers of two
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ATTN_SHAPES)
def test_attention_matches_reference(shape, dtype):
    B, H, T, dn, dr, dv, start = shape
    torch.manual_seed(0)
    make = lambda *s: torch.randn(*s, device=DEVICE)  # noqa: E731
    fp32 = [make(B, H, T, dn), make(B, H, T, dr), make(B, H, T, dn), make(B, T, dr), make(B, H, T, dv)]
    start = torch.tensor(start, device=DEVICE) if start else None
    scale = (dn + dr) ** -0.5
    grad_out = make(B, H, T, dv)

    def run(fn, tensors):
        tensors = [t.detach().requires_grad_() for t in tensors]
        out = fn(*tensors, scale, start)
        grads = torch.autograd.grad(out, tensors, grad_out.to(out.dtype))
        return out, grads

    truth, truth_grads = run(reference.mla_attention, fp32)
    low = [t.to(dtype) for t in fp32]
    out, grads = run(flash_mla_attention, low)
    torch_out, torch_grads = run(reference.mla_attention, low)
    assert out.dtype == dtype and out.shape == (B, H, T, dv)
    check(out, truth, torch_out, dtype, 1e-5)
    for g, t, tg in zip(grads, truth_grads, torch_grads):
        assert g.dtype == dtype
        check(g, t, tg, dtype, 1e-4)
    if start is not None:  # query rows inside the padding output exactly zero
        pos = torch.arange(T, device=DEVICE)
        assert (out.float()[(pos[None, :] < start[:, None])[:, None].expand(B, H, T)] == 0).all()


CE_SHAPES = [  # (N, D, V, share of ignored rows)
    (1, 16, 64, 0.0),
    (37, 32, 4099, 0.2),  # odd vocab, ignore_index rows
    (64, 48, 507, 0.0),  # several chunks
    (12, 16, 300, 1.0),  # every target ignored
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", CE_SHAPES)
def test_fused_linear_cross_entropy_matches_reference(shape, dtype):
    N, D, V, ignored = shape
    torch.manual_seed(0)
    hidden, weight = torch.randn(N, D, device=DEVICE), torch.randn(V, D, device=DEVICE) * 0.3
    targets = torch.randint(0, V, (N,), device=DEVICE)
    targets[torch.rand(N, device=DEVICE) < ignored] = -100
    if ignored == 1.0:
        targets[:] = -100
    grad_out = torch.rand(N, device=DEVICE)  # per-token weights, as GRPO uses them

    def run(fn, h, w, **kw):
        h, w = h.detach().requires_grad_(), w.detach().requires_grad_()
        loss = fn(h, w, targets, **kw)
        return (loss, *torch.autograd.grad(loss, (h, w), grad_out))

    truth = run(reference.linear_cross_entropy, hidden, weight)
    kernel = run(fused_linear_cross_entropy, hidden.to(dtype), weight.to(dtype), chunk=16)
    torch_low = run(reference.linear_cross_entropy, hidden.to(dtype), weight.to(dtype))
    assert kernel[0].dtype == torch.float32 and kernel[1].dtype == dtype and kernel[2].dtype == dtype
    for k, t, tl_, tol in zip(kernel, truth, torch_low, (1e-5 * max(1, truth[0].abs().max().item()), 1e-4, 1e-4)):
        check(k, t, tl_, dtype, tol)
    assert (kernel[0][targets == -100] == 0).all()


def test_fused_ce_default_chunking_and_logprobs():
    torch.manual_seed(1)
    hidden, weight, targets = torch.randn(50, 16), torch.randn(130, 16), torch.randint(0, 130, (50,))
    loss = fused_linear_cross_entropy(hidden, weight, targets)
    logprobs = torch.log_softmax(hidden @ weight.t(), -1).gather(1, targets[:, None])[:, 0]
    assert torch.allclose(-loss, logprobs, atol=1e-5)


def test_model_with_triton_kernels_equals_torch_path():
    import runpy
    from nanor1.model import GPT, ModelConfig
    root = __file__.rsplit("/tests/", 1)[0]
    base = runpy.run_path(f"{root}/configs/model_test.py")["model"]
    idx = torch.randint(0, 512, (2, 20), device=DEVICE)
    start = torch.tensor([0, 4], device=DEVICE)
    results = []
    for impl in ("torch", "triton"):
        torch.manual_seed(0)
        model = GPT(ModelConfig(**base, attn_impl=impl, loss_impl=impl)).to(DEVICE)
        out = model(idx, targets=idx, start=start)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.allclose(loss_a, loss_b, atol=1e-5)
    for a, b in zip(grads_a, grads_b):
        assert torch.allclose(a, b, atol=1e-4)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match=r"k_rope \(2, 5, 8\)"):
        flash_mla_attention(torch.randn(1, 1, 4, 16), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 16),
                            torch.randn(2, 5, 8), torch.randn(1, 1, 4, 16), 0.2)
    with pytest.raises(ValueError, match=r"weight \(10, 7\)"):
        fused_linear_cross_entropy(torch.randn(3, 8), torch.randn(10, 7), torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize("blocks", [(64, 32), (32, 64), (32, 16)])
def test_attention_at_gpu_block_shapes(blocks, monkeypatch):
    """The two-stage loops (unmasked blocks, then the diagonal ones) with unequal query/key blocks, as the GPU
    uses, forced through the interpreter: fp32 forward and gradients against the reference."""
    from nanor1.kernels import attention
    BM, BN = blocks
    monkeypatch.setattr(attention, "block_config",
                        lambda *a: dict(BLOCK_M=BM, BLOCK_N=BN, num_warps=4, num_stages=2))
    B, H, T, dn, dr, dv = 2, 1, 150, 16, 16, 32
    torch.manual_seed(1)
    tensors = [torch.randn(B, H, T, dn), torch.randn(B, H, T, dr), torch.randn(B, H, T, dn), torch.randn(B, T, dr),
               torch.randn(B, H, T, dv)]
    grad_out = torch.randn(B, H, T, dv)
    for start in (None, torch.tensor([0, 45])):
        outs = []
        for fn in (reference.mla_attention, attention.flash_mla_attention):
            leaves = [t.clone().requires_grad_() for t in tensors]
            out = fn(*leaves, (dn + dr) ** -0.5, start)
            outs.append((out, torch.autograd.grad(out, leaves, grad_out)))
        (ref, ref_grads), (out, grads) = outs
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-4)


def test_chunk_rows_follows_liger_and_free_memory():
    from nanor1.kernels.cross_entropy import chunk_rows
    assert chunk_rows(16384, 131072, 4096) == 512  # a chunk of logits ~ the hidden states' size
    assert chunk_rows(16384, 131072, 4096, free_bytes=8 * 64 * 131072 * 4, logit_bytes=4) == 64  # memory cap
    assert chunk_rows(16384, 131072, 4096, free_bytes=1, logit_bytes=4) == 16  # never below 16 rows
    assert chunk_rows(10, 100, 64) == 16
