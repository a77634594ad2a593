# Rejection sampling at GRPO's sampling cost on Countdown, from configs/countdown_laptop.py's cold start (issue #18):
#   python train_grpo.py configs/countdown_laptop.py                  (the cold start, and the GRPO arm)
#   python -m nanor1.rejection configs/rejection_countdown_equal_cost.py
#   python train_sft.py configs/sft_countdown_continued.py            (the continued-SFT arm)
# GRPO samples 300 steps x 3 sampling rounds (DAPO refill) x 32 prompts x 8 = 230,400 responses. Here: 256 x 32
# labelled samples for the ORM, then 3 rounds x 2,300 prompts x 32 samples (best-of-32; fewer after prompt dedup
# and decontamination), about 229,000 in all. Each round fine-tunes on the kept data of every round so far.
import os
import runpy

_here = os.path.dirname(os.path.abspath(__file__))
sft = dict(runpy.run_path(os.path.join(_here, "countdown_laptop.py"))["sft"], progress=False)
init_from = "out/countdown_laptop/sft/ckpt.pt"
out_dir = "out/rejection_countdown_equal_cost"
tasks = ("countdown",)
rounds = 3
prompts_per_round = 2300
n_samples = 32
temperature = 1.0
max_new_tokens = 200
keep_per_prompt = 1
rank_by = "orm"
accumulate = True
sft_mix = 0.0
finetune_steps = 200
finetune_lr = 5e-4
label_prompts = 256
eval_problems = 200
