"""Checkpoints: one file holding model, optimizer, step, RNG states, config and tokenizer.

Written atomically (a temp file in the same folder, then os.replace), so a crash never leaves half a file;
loaded with torch.load(weights_only=True), so a checkpoint can hold tensors and plain data, never code.
"""
import base64
import json
import os
import random
import tempfile

import torch

from nanor1.tokenizer import SPECIAL_TOKENS, Tokenizer


def tokenizer_to_dict(tok):
    return {"ranks": "\n".join(f"{base64.b64encode(b).decode()} {r}" for b, r in tok.ranks.items()),
            "special_tokens": json.dumps(SPECIAL_TOKENS)}


def tokenizer_from_dict(d):
    if json.loads(d["special_tokens"]) != SPECIAL_TOKENS:
        raise ValueError("checkpoint's tokenizer has other special tokens than this version of nanor1")
    ranks = {}
    for line in d["ranks"].split("\n"):
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return Tokenizer(ranks)


def rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path, **items):
    """torch.save(items) to `path` atomically."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="tmp-ckpt-", suffix=".pt")  # no leading dot: torch.save refuses it
    os.close(fd)
    try:
        torch.save(items, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def find(path):
    """A checkpoint file, or a folder holding ckpt.pt -> the file's path."""
    file = os.path.join(path, "ckpt.pt") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no checkpoint at {path} (expected a .pt file or a folder with ckpt.pt)")
    return file


def load(path, device="cpu"):
    file = find(path)
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as e:
        raise ValueError(f"{file}: not a readable nanor1 checkpoint ({type(e).__name__}: {str(e)[:120]})") from None


def load_model(path, device="cpu"):
    """-> (model, tokenizer, checkpoint dict) from a checkpoint file or an out dir."""
    from nanor1.config import config_from_dict
    from nanor1.model import GPT, ModelConfig
    ckpt = load(path, device)
    cfg = config_from_dict(ModelConfig, ckpt["model_config"])
    model = GPT(cfg).to(device)
    model.load_state_dict(ckpt["model"])
    return model, tokenizer_from_dict(ckpt["tokenizer"]), ckpt
