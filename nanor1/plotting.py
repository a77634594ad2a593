"""Curves from an out_dir's metrics.jsonl to a PNG (matplotlib is optional: without it, no plot)."""
import json
import math


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is not installed (it is optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_metrics(metrics_path, png_path, keys, title=""):
    """One panel per key that appears in the metrics; x = step. Returns the PNG path, or None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    rows = read_metrics(metrics_path)
    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return None
    cols = min(3, len(keys))
    fig, axes = plt.subplots(math.ceil(len(keys) / cols), cols, figsize=(4.5 * cols, 3 * math.ceil(len(keys) / cols)),
                             squeeze=False)
    for ax, key in zip(axes.flat, keys):
        points = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 30 else None)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
