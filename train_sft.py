"""Supervised fine-tuning from scratch (or from a checkpoint) on the tasks' SFT targets or a JSONL file.

    python train_sft.py configs/sft_arithmetic_laptop.py [--key=value ...]
    python train_sft.py configs/sft_arithmetic_laptop.py --resume=true        # continue an interrupted run
    torchrun --nproc_per_node=2 train_sft.py CONFIG.py                       # several GPUs (DDP)

    python train_sft.py --help                                                # every config key
Writes out_dir/ckpt.pt, out_dir/metrics.jsonl, out_dir/sft.png and out_dir/tokenizer/.
The loop itself is nanor1/sft.py.
"""
from nanor1.cli import main
from nanor1.sft import SFTConfig, train

if __name__ == "__main__":
    main(SFTConfig, train, __doc__)
