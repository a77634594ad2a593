"""The GPU's mixed-precision pattern, proven on the CPU: bf16 autocast (torch.autocast("cpu", torch.bfloat16)) runs
the matmuls in bf16 and keeps parameters, gradients and reductions in fp32, as CUDA autocast does. Each test here
failed before the fix it guards (see issue #12)."""
import json
import math
import os
import runpy
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import train_grpo  # noqa: E402
from nanor1 import checkpoint, model as model_lib  # noqa: E402
from nanor1.config import load_config  # noqa: E402
from nanor1.device import autocast, resolve_dtype  # noqa: E402
from nanor1.kernels import reference  # noqa: E402
from nanor1.model import GPT, MoE, ModelConfig  # noqa: E402

BF16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731


def fused_linear_cross_entropy(*args):
    pytest.importorskip("triton")  # Linux only; the kernels' tests need it
    from nanor1.kernels.cross_entropy import fused_linear_cross_entropy as fused
    return fused(*args)


def flash_mla_attention(*args):
    pytest.importorskip("triton")
    from nanor1.kernels.attention import flash_mla_attention as flash
    return flash(*args)
TEST_MODEL = runpy.run_path(os.path.join(ROOT, "configs", "model_test.py"))["model"]


# ------------------------------------------------------------------------------------------- fused CE

def _ce_case(sharpness, N=64, D=32, V=300, seed=0):
    """Hidden states and a head whose target logits are pushed up: mean p(target) from ~0 to ~1."""
    g = torch.Generator().manual_seed(seed)
    h, w = torch.randn(N, D, generator=g), 0.3 * torch.randn(V, D, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    t[::5] = -100
    real = t >= 0
    w[t[real]] += sharpness * h[real] / h[real].norm(dim=1, keepdim=True)
    return h, w, t


def _loss_and_grads(fn, h, w, t, backward_inside):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    weights = torch.linspace(0.5, 1.5, h.size(0), dtype=h.dtype)  # GRPO weights each token by its advantage
    with BF16():
        loss = fn(h, w, t)
        if backward_inside:
            (loss * weights).sum().backward()
    if not backward_inside:  # train_grpo.py and sft.py call .backward() outside the autocast block
        (loss * weights).sum().backward()
    return loss.detach(), h.grad, w.grad


def _rel(x, truth):
    return ((x.double() - truth).norm() / truth.norm()).item()


@pytest.mark.parametrize("backward_inside", [True, False])
@pytest.mark.parametrize("sharpness", [0.0, 3.0, 10.0])
def test_fused_ce_gradients_under_bf16_autocast_match_fp64(sharpness, backward_inside):
    h, w, t = _ce_case(sharpness)
    hd, wd = h.double().requires_grad_(), w.double().requires_grad_()
    truth = reference.linear_cross_entropy(hd, wd, t).double()
    (truth * torch.linspace(0.5, 1.5, h.size(0), dtype=torch.float64)).sum().backward()
    if sharpness == 10.0:
        assert torch.exp(-truth[t >= 0]).median() > 0.99  # the regime where the old backward was off by 1e5x
    for fn, bound in ((reference.linear_cross_entropy, 1.2e-2), (fused_linear_cross_entropy, 3e-2)):
        loss, dh, dw = _loss_and_grads(fn, h, w, t, backward_inside)
        assert dh.dtype == torch.float32 and dw.dtype == torch.float32  # fp32 parameters get fp32 gradients
        assert _rel(loss, truth.detach()) < bound
        assert _rel(dh, hd.grad) < bound, fn.__name__
        assert _rel(dw, wd.grad) < bound, fn.__name__


def test_fused_ce_edge_cases_and_clear_errors():
    w = torch.randn(50, 8, requires_grad=True)
    empty = fused_linear_cross_entropy(torch.randn(0, 8, requires_grad=True), w, torch.zeros(0, dtype=torch.long))
    assert empty.shape == (0,)
    h = torch.randn(6, 8, requires_grad=True)
    loss = fused_linear_cross_entropy(h, w, torch.full((6,), -100))  # every row ignored: no GEMM, zero gradients
    loss.sum().backward()
    assert (loss == 0).all() and (h.grad == 0).all() and (w.grad == 0).all()
    with pytest.raises(ValueError, match=r"target 50 is outside \[0, 50\)"):
        fused_linear_cross_entropy(torch.randn(3, 8), w, torch.tensor([1, 50, -100]))
    with pytest.raises(ValueError, match=r"target -3 is outside"):
        fused_linear_cross_entropy(torch.randn(3, 8), w, torch.tensor([1, -3, 2]))


def test_attention_refuses_inputs_of_mixed_dtypes():
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="share one dtype, got float32, float32, float32, bfloat16, float32"):
        flash_mla_attention(q, torch.randn(1, 1, 4, 16), q, torch.randn(1, 4, 16, dtype=torch.bfloat16), q, 0.2)


def test_model_with_triton_kernels_equals_torch_path_under_bf16_autocast():
    """Reference vs Triton (interpreter) inside a model forward and backward under autocast: the attention
    kernel gets bf16 q/k/v, the fused CE a bf16 GEMM; both paths see the same bf16 rounding of their inputs."""
    idx = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(0))
    start = torch.tensor([0, 4])
    results = []
    for impl in ("torch", "triton"):
        torch.manual_seed(0)
        model = GPT(ModelConfig(**TEST_MODEL, attn_impl=impl, loss_impl=impl))
        with BF16():
            out = model(idx, targets=idx, start=start)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad for p in model.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.isfinite(loss_a) and abs(loss_a - loss_b) < 1e-3 * abs(loss_a)
    flat_a, flat_b = torch.cat([g.flatten() for g in grads_a]), torch.cat([g.flatten() for g in grads_b])
    assert (flat_a - flat_b).norm() < 2e-2 * flat_a.norm()  # bf16 rounding of the inputs, not a wrong gradient
    for a, b in zip(grads_a, grads_b):
        assert (a - b).norm() <= 0.1 * a.norm() + 1e-6


# ------------------------------------------------------------------------------------------------- MoE

def _moe_cfg(**kw):
    return ModelConfig(**{**TEST_MODEL, "dim": 32, "moe_inter_dim": 16, **kw})


def test_moe_takes_the_grouped_path_under_autocast_and_matches_the_loop():
    torch.manual_seed(0)
    moe = MoE(_moe_cfg())
    for p in (moe.w1, moe.w3, moe.w2, moe.gate.weight):
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 9, 32)
    outs = {}
    for impl in ("auto", "loop"):
        moe.cfg.moe_impl = impl
        model_lib.expert_path_used.update(grouped=0, loop=0)
        with BF16():
            outs[impl] = moe(x)[0]
        used = dict(model_lib.expert_path_used)
        assert used == ({"grouped": 3, "loop": 0} if impl == "auto" else {"grouped": 0, "loop": 3}), used
    assert (outs["auto"].float() - outs["loop"].float()).abs().max() < 1e-2
    model_lib.expert_path_used.update(grouped=0, loop=0)
    moe.cfg.moe_impl = "auto"
    moe(x)  # fp32 without autocast: the loop (grouped_mm is a bf16 kernel)
    assert model_lib.expert_path_used == {"grouped": 0, "loop": 3}


def test_moe_load_and_balance_loss_count_only_real_tokens():
    """A right-padded row (targets -100 on the padding) routes, counts and balances exactly as the row alone."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**{**TEST_MODEL, "seq_aux_alpha": 1.0})).train()
    idx = torch.randint(1, 512, (1, 12))
    targets = idx.roll(-1, 1)
    targets[:, :4] = -100  # the prompt: no target
    padded_idx = torch.cat([idx, torch.zeros(1, 20, dtype=torch.long)], 1)
    padded_targets = torch.cat([targets, torch.full((1, 20), -100)], 1)
    loads, auxes = [], []
    for i, t in ((idx, targets), (padded_idx, padded_targets)):
        for moe in model.moe_layers():
            moe.load.zero_()
        out = model(i, targets=t)
        loads.append(torch.stack([m.load.clone() for m in model.moe_layers()]))
        auxes.append(out.losses["aux"].item())
    assert torch.equal(loads[0], loads[1])
    n_real_main = int((targets != -100).sum())
    assert loads[0][0].sum() == n_real_main * model.cfg.n_activated_experts  # first MoE layer: real tokens x K
    assert math.isclose(auxes[0], auxes[1], rel_tol=1e-5)
    for moe in model.moe_layers():  # a no-grad pass (GRPO's pi_old / pi_ref) counts nothing
        moe.load.zero_()
    with torch.no_grad():
        model(padded_idx, targets=padded_targets)
    assert all(m.load.sum() == 0 for m in model.moe_layers())


# ------------------------------------------------------------------------------------------------ loops

def _grpo_cfg(tmp_path, *overrides):
    return load_config(train_grpo.GRPOConfig, [os.path.join(ROOT, "configs", "grpo_test.py"),
                                               f"--out_dir={tmp_path / 'grpo'}", f"--sft.out_dir={tmp_path / 'sft'}",
                                               *overrides]).check()


def test_dtype_switch():
    assert resolve_dtype("cuda") == "bf16" and resolve_dtype("cpu") == "fp32" and resolve_dtype("cpu", "bf16") == "bf16"
    assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("cpu", "fp16")


def test_sft_then_grpo_under_bf16_autocast_first_ratio_is_one_and_losses_finite(tmp_path):
    """SFT and GRPO steps with dtype=bf16 on the CPU (the fused CE through the interpreter). At mu=1 the update's
    log-probs and pi_old's come from the same bf16 forward, so the ratio is exactly 1 (it was 0.90..1.12)."""
    cfg = _grpo_cfg(tmp_path, "--dtype=bf16", "--sft.dtype=bf16", "--sft.model.loss_impl=triton", "--mu=1",
                    "--beta=0.04", "--steps=2", "--eval_every=100", "--sft.max_steps=10", "--prompts_per_step=4", "--micro_batch=6")
    path = train_grpo.cold_start(cfg)
    sft_rows = [json.loads(line) for line in open(tmp_path / "sft" / "metrics.jsonl")][1:]
    assert sft_rows and all(math.isfinite(r["loss"]) for r in sft_rows)
    model, tok, _ = checkpoint.load_model(path)
    ref = checkpoint.load_model(path)[0].eval().requires_grad_(False)
    optimizer = train_grpo.make_optimizer(model, cfg, torch.device("cpu"))
    for step in range(2):
        m = train_grpo.grpo_step(cfg, model, ref, optimizer, tok, train_grpo.make_tasks(cfg, ["arithmetic"])[0],
                                 step, torch.device("cpu"))
        assert m["ratio_min"] == 1.0 and m["ratio_max"] == 1.0, m  # bitwise: the same bf16 forward
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])
        if step == 0:
            assert m["kl"] < 1e-6  # the policy equals its reference before the first update: no KL floor


def test_grpo_freezes_the_moe_bias_unless_asked(tmp_path):
    path = train_grpo.cold_start(_grpo_cfg(tmp_path))
    for update, changes in (("false", False), ("true", True)):
        cfg = _grpo_cfg(tmp_path, f"--moe_bias_update={update}", "--beta=0.0")
        model, tok, _ = checkpoint.load_model(path)
        before = [m.gate.bias.clone() for m in model.moe_layers()]
        optimizer = train_grpo.make_optimizer(model, cfg, torch.device("cpu"))
        train_grpo.grpo_step(cfg, model, None, optimizer, tok, train_grpo.make_tasks(cfg, ["arithmetic"])[0], 0,
                             torch.device("cpu"))
        moved = any(not torch.equal(b, m.gate.bias) for b, m in zip(before, model.moe_layers()))
        assert moved == changes
        assert all(m.load.sum() == 0 for m in model.moe_layers())  # nothing left over for a later step


def test_gpu_check_smoke_mode_runs_every_section(tmp_path):
    """The one prepared GPU command, in its CPU smoke mode, so it cannot rot before a GPU runs it."""
    from nanor1.bench import gpu_check
    report = tmp_path / "report.md"
    assert gpu_check.main(["--smoke", "--work_dir", str(tmp_path / "work"), "--out", str(report)]) == 0
    text = report.read_text()
    for needle in ("## Kernel tests", "exit 0", "| ours (Triton) |", "| torch reference |", "| fwd+bwd |",
                   "### GRPO", "| 3 (eager) |", "## Decoding", "| static |", "all passed"):
        assert needle in text, needle
    assert "'grouped': 0," not in text  # under bf16 autocast the experts ran on the grouped path


def test_mtp_loss_ignores_left_padding():
    """A left-padded row scores exactly as the row alone: padding positions predict nothing, MTP included."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(**TEST_MODEL)).eval()
    idx = torch.randint(1, 512, (1, 10))
    targets = idx.roll(-1, 1)
    targets[:, -1] = -100
    pad = 5
    padded_idx = torch.cat([torch.zeros(1, pad, dtype=torch.long), idx], 1)
    padded_targets = torch.cat([torch.full((1, pad), -100), targets], 1)  # MTP depth 1 at position pad-1 (padding)
    alone = model(idx, targets=targets)                                   # would predict targets[pad], a real token
    padded = model(padded_idx, targets=padded_targets, start=torch.tensor([pad]))
    assert torch.allclose(alone.losses["mtp"], padded.losses["mtp"], atol=1e-5)
    assert torch.allclose(alone.losses["main"], padded.losses["main"], atol=1e-5)
