"""Checkpoints: one file holding model, optimizer, step, RNG states, config and tokenizer.

Written atomically (a temp file in the same folder, fsync'd, then os.replace, then the folder fsync'd), so a
crash or power loss never leaves half a file; temp files of a killed save are removed by the next run
(clean_temp). A checksum over every tensor and value is stored inside and checked on load, so a flipped byte
is an error, not silently changed weights. Loaded with torch.load(weights_only=True): tensors and plain data,
never code.
"""
import base64
import glob
import hashlib
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


TEMP_PREFIX = "tmp-ckpt-"


def checksum(obj):
    """A BLAKE2b digest of a checkpoint's contents: every tensor's dtype, shape and bytes, every plain value."""
    h = hashlib.blake2b(digest_size=16)

    def walk(x):
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"D")
            for k in sorted(x, key=str):
                h.update(repr(k).encode())
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            h.update(b"L" if isinstance(x, list) else b"U")
            for v in x:
                walk(v)
        else:
            h.update(repr(x).encode())
    walk(obj)
    return h.hexdigest()


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(path, **items):
    """torch.save(items + checksum) to `path` atomically and durably."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    items["checksum"] = checksum(items)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=".pt")  # no leading dot: torch.save refuses it
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(items, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(folder)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def clean_temp(folder):
    """Remove the temp files that killed saves left in `folder` (a run calls this when it starts) -> count."""
    stale = glob.glob(os.path.join(glob.escape(folder), TEMP_PREFIX + "*.pt"))
    for path in stale:
        os.remove(path)
    return len(stale)


def find(path):
    """A checkpoint file, or a folder holding ckpt.pt -> the file's path."""
    file = os.path.join(path, "ckpt.pt") if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(f"no checkpoint at {path} (expected a .pt file or a folder with ckpt.pt)")
    return file


REQUIRED = ("model", "model_config", "tokenizer")


def load(path, device="cpu"):
    """A checkpoint dict, checked: readable, a dict with the keys a model needs, its checksum intact."""
    file = find(path)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{file}: not a readable nanor1 checkpoint ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED):
        missing = [k for k in REQUIRED if not isinstance(ckpt, dict) or k not in ckpt]
        raise ValueError(f"{file}: not a nanor1 checkpoint (missing {', '.join(missing)})")
    stored = ckpt.pop("checksum", None)
    if stored is not None and checksum(ckpt) != stored:
        raise ValueError(f"{file}: checksum mismatch, the file is corrupted (use an earlier checkpoint)")
    if torch.device(device).type != "cpu":
        ckpt["model"] = {k: v.to(device) for k, v in ckpt["model"].items()}
    return ckpt


def open_run(out_dir, resume, overwrite, config, defines_run):
    """The checks a run makes on its out_dir before it writes anything -> the checkpoint to resume, or None.
    config: the run's config as a dict; defines_run(dotted key) -> True for keys that change what is trained
    (they must match the checkpoint's on resume). A fresh run never overwrites another run's ckpt.pt and
    metrics.jsonl unless overwrite is set. Temp files of killed saves are removed."""
    from nanor1.config import ConfigError, config_diff
    os.makedirs(out_dir, exist_ok=True)
    clean_temp(out_dir)
    path = os.path.join(out_dir, "ckpt.pt")
    if resume:
        if not os.path.exists(path):
            raise ConfigError(f"config key 'resume' is true but there is no checkpoint at {path}")
        ckpt = load(path)
        stale = config_diff(ckpt.get("config", {}), config, defines_run)
        if stale:
            raise ConfigError(f"--resume=true with another config than {path} was trained with: "
                              + "; ".join(stale) + " (undo those changes, or start a new out_dir)")
        return ckpt
    if os.path.exists(path) and not overwrite:
        step = load(path).get("step", "?")
        raise ConfigError(f"{out_dir} already holds a run (ckpt.pt at step {step}): --resume=true continues it, "
                          "--overwrite=true starts over there, or set another out_dir")
    return None


def load_model(path, device="cpu"):
    """-> (model, tokenizer, checkpoint dict) from a checkpoint file or an out dir."""
    from nanor1.config import config_from_dict
    from nanor1.model import GPT, ModelConfig
    ckpt = load(path, device)
    cfg = config_from_dict(ModelConfig, ckpt["model_config"])
    model = GPT(cfg).to(device)
    model.load_state_dict(ckpt["model"])
    return model, tokenizer_from_dict(ckpt["tokenizer"]), ckpt
