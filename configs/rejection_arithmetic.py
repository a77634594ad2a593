# Rejection sampling / expert iteration on arithmetic, starting from the laptop SFT model:
#   python train_sft.py configs/sft_arithmetic_laptop.py        (the start, if not there yet)
#   python -m nanor1.rejection configs/rejection_arithmetic.py
# Each round: 1024 train prompts x 8 samples, filters (format, length, repetition, charset, verifier), the
# outcome reward model ranks the survivors, one distinct correct response per prompt is kept, then 200 steps
# of fine-tuning on the kept data. Held-out pass@1 / pass@8 / greedy accuracy are logged per round.
import os
import runpy

_here = os.path.dirname(os.path.abspath(__file__))
sft = {k: v for k, v in runpy.run_path(os.path.join(_here, "sft_arithmetic_laptop.py")).items()
       if not k.startswith("_") and not callable(v) and not isinstance(v, type(os))}
sft["progress"] = False
init_from = "out/sft_arithmetic_laptop/ckpt.pt"
out_dir = "out/rejection_arithmetic"
tasks = ("arithmetic",)
rounds = 3
prompts_per_round = 1024
n_samples = 8
temperature = 1.0
max_new_tokens = 80
keep_per_prompt = 1
rank_by = "orm"
finetune_steps = 200
finetune_lr = 5e-4
eval_problems = 200
