# Rejection sampling at GRPO's sampling cost, from configs/arithmetic.py's cold start (issue #18's comparison):
#   python train_grpo.py configs/arithmetic.py                        (the cold start, and the GRPO arm)
#   python -m nanor1.rejection configs/rejection_arithmetic_equal_cost.py
#   python train_sft.py configs/sft_arithmetic_continued.py           (the continued-SFT arm)
# GRPO samples 60 steps x 32 prompts x 8 = 15,360 responses; here 3 rounds x 640 prompts x 8 = 15,360. Each round
# fine-tunes on the kept data of every round so far (accumulate) for 100 steps of 64.
import os
import runpy

_here = os.path.dirname(os.path.abspath(__file__))
sft = dict(runpy.run_path(os.path.join(_here, "arithmetic.py"))["sft"], progress=False)
init_from = "out/arithmetic/sft/ckpt.pt"
out_dir = "out/rejection_equal_cost"
tasks = ("arithmetic",)
rounds = 3
prompts_per_round = 640
n_samples = 8
temperature = 1.0
max_new_tokens = 80
keep_per_prompt = 1
rank_by = "orm"
accumulate = True
sft_mix = 0.0
finetune_steps = 100
finetune_lr = 5e-4
eval_problems = 200
