"""Run by tests/test_grpo.py under torchrun (gloo, 2 CPU processes): one GRPO policy update on a fixed batch,
each rank holding half of the rows; rank 0 writes the updated parameters for the test to compare."""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import train_grpo  # noqa: E402
from nanor1 import checkpoint  # noqa: E402
from nanor1.config import load_config  # noqa: E402


def fixed_update(cfg_args, ckpt, rows, world, rank, device="cpu"):
    """The update a rank makes from its rows of the fixed batch -> the model."""
    cfg = load_config(train_grpo.GRPOConfig, cfg_args).check()
    model, tok, _ = checkpoint.load_model(ckpt)
    prompts = [tok.render_prompt(f"What is {i} + {i % 3}?") for i in range(8)]
    responses = [tok.encode_response(f"<think></think><answer>{'1' * (1 + i % 4)}</answer>") for i in range(8)]
    adv = torch.linspace(-1.0, 1.0, 8)
    keep = list(rows)
    inputs, targets, mask = train_grpo.build_batch([prompts[i] for i in keep], [responses[i] for i in keep],
                                                   tok.pad_id, device)
    optimizer = train_grpo.make_optimizer(model, cfg, torch.device(device))
    grads, step = [], optimizer.step

    def record_then_step():  # the (all-reduced, clipped) gradient each inner update applies
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        step()
    optimizer.step = record_then_step
    precision = lambda: torch.autocast("cpu", enabled=False)  # noqa: E731
    train_grpo.policy_update(cfg, model, None, optimizer, inputs, targets, mask, adv[keep], precision, 0, world,
                             torch.device(device))
    return model, grads


if __name__ == "__main__":
    ckpt, out, *cfg_args = sys.argv[1:]
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model, grads = fixed_update(cfg_args, ckpt, range(rank, 8, world), world, rank)
    if rank == 0:
        torch.save({"params": {k: v.detach().clone() for k, v in model.state_dict().items()}, "grads": grads}, out)
    dist.barrier()  # both ranks done before either tears gloo down
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown, where gloo's threads can abort a finished process
