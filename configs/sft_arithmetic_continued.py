# Continued SFT on the synthetic teacher traces, at GRPO's budget of sequences (issue #18's comparison):
#   python train_sft.py configs/sft_arithmetic_continued.py
# From configs/arithmetic.py's cold start: 240 steps x 64 = 15,360 sequences (GRPO samples 15,360 responses),
# fresh targets (another seed) on the same train problems, at the rejection fine-tunes' learning rate.
import os
import runpy

_here = os.path.dirname(os.path.abspath(__file__))
globals().update(runpy.run_path(os.path.join(_here, "arithmetic.py"))["sft"])
init_from = "out/arithmetic/sft/ckpt.pt"
out_dir = "out/sft_arithmetic_continued"
n_examples = 15360
seed = 7
max_steps = 240
lr = 5e-4
warmup_steps = 10
eval_every = 0
save_every = 240
progress = False
