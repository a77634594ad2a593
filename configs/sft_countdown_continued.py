# Continued SFT on the synthetic search traces, at GRPO's budget of training sequences (issue #18's comparison):
#   python train_sft.py configs/sft_countdown_continued.py
# From configs/countdown_laptop.py's cold start: 975 steps x 64 = 62,400 sequences, as many as GRPO's 300 steps
# trained on (the informative groups: 62,296 responses; it sampled 230,400), fresh traces (another seed), at the
# rejection fine-tunes' learning rate.
import os
import runpy

_here = os.path.dirname(os.path.abspath(__file__))
globals().update(runpy.run_path(os.path.join(_here, "countdown_laptop.py"))["sft"])
init_from = "out/countdown_laptop/sft/ckpt.pt"
out_dir = "out/sft_countdown_continued"
n_examples = 62400
seed = 7
max_steps = 975
lr = 5e-4
warmup_steps = 10
eval_every = 0
save_every = 975
progress = False
