"""Training curves: results.csv -> results.png (the six train losses and the validation mAPs per epoch)."""
import csv
import math
from pathlib import Path

LOSS_COLUMNS = ("train/box_om", "train/cls_om", "train/dfl_om", "train/box_oo", "train/cls_oo", "train/dfl_oo")
MAP_COLUMNS = ("metrics/mAP50", "metrics/mAP50-95")


def read_results(csv_path):
    """results.csv -> {column: [float per epoch]} (empty cells become NaN)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = rows[0].keys() if rows else ()
    out = {}
    for c in cols:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[c]))
            except (TypeError, ValueError):
                vals.append(math.nan)
        out[c.strip()] = vals
    return out


def plot_results(csv_path, out_path=None):
    """Write a PNG with one panel per loss and per mAP column; returns its path."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    csv_path = Path(csv_path)
    out_path = Path(out_path) if out_path else csv_path.with_name("results.png")
    data = read_results(csv_path)
    epochs = data.get("epoch", [])
    panels = [c for c in LOSS_COLUMNS + MAP_COLUMNS if c in data]
    fig, axes = plt.subplots(2, 4, figsize=(16, 7), tight_layout=True)
    axes = axes.ravel()
    for ax, col in zip(axes, panels):
        ax.plot(epochs, data[col], marker=".", linewidth=2, markersize=6)
        ax.set_title(col, fontsize=11)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.axis("off")
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path
