"""`yolov10 rank`: the intrinsic numerical rank behind YOLOv10's rank-guided block design. For each stage (a
C2f / C2fCIB layer of the backbone or neck) the last convolution of its last block is reshaped to
(C_out, C_in * k * k); its rank is the number of singular values above half the largest, reported as
r / C_out. The lowest-ranked stages are the most redundant ones, which the scheme turns into CIB first."""
import json
from pathlib import Path

import torch
import torch.nn as nn

from .modules import C2f

THRESHOLD = 0.5  # a singular value counts when it is above this fraction of the largest


def numerical_rank(weight, threshold=THRESHOLD):
    """Rank of a conv weight (C_out, C_in/groups, k, k) seen as a (C_out, C_in * k * k) matrix."""
    if weight.dim() < 2:
        raise ValueError(f"expected a convolution weight (C_out, C_in, k, k), got shape {tuple(weight.shape)}")
    s = torch.linalg.svdvals(weight.detach().reshape(weight.shape[0], -1).double().cpu())
    return int((s > threshold * s[0]).sum()) if s[0] > 0 else 0


def last_dense_conv(block):
    """The block's last convolution mixing channels. Depthwise convolutions are passed over: their matrix
    has k * k columns, so its rank bounds nothing about the redundancy of the block's channels."""
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    if not convs:
        raise ValueError(f"{type(block).__name__} has no dense convolution")
    return convs[-1]


def _strides(model):
    """Each layer's output stride, from one small dry run."""
    out = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, idx=idx: out.__setitem__(idx, o.shape[-1]))
             for idx, m in enumerate(model.model[:-1])]
    try:
        with torch.no_grad():
            model.features(torch.zeros(1, model.ch, 64, 64, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
    return {i: 64 // w for i, w in out.items()}


def stage_ranks(model, threshold=THRESHOLD):
    """One row per stage, in layer order: layer, module, part (backbone/neck), stride, conv (its module
    name), c_out, rank, ratio (rank / c_out)."""
    n_backbone = len(model.yaml["backbone"])
    strides, names = _strides(model.eval()), {m: n for n, m in model.named_modules()}
    rows = []
    for i, layer in enumerate(model.model):
        if not isinstance(layer, C2f):  # C2fCIB is a C2f
            continue
        conv = last_dense_conv(layer.m[-1])
        r = numerical_rank(conv.weight, threshold)
        rows.append({"layer": i, "module": type(layer).__name__, "part": "backbone" if i < n_backbone else "neck",
                     "stride": strides[i], "conv": names[conv], "c_out": conv.out_channels, "rank": r,
                     "ratio": r / conv.out_channels})
    return rows


def cib_order(rows):
    """Stages in the order the rank-guided scheme would try CIB on them: lowest rank ratio first."""
    return sorted(rows, key=lambda r: (r["ratio"], r["layer"]))


def format_table(rows):
    order = {r["layer"]: k for k, r in enumerate(cib_order(rows), 1)}
    lines = ["| stage (layer) | block | part | stride | last conv | C_out | rank r | r / C_out | CIB order |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['layer']} | {r['module']} | {r['part']} | P{r['stride'].bit_length() - 1}/{r['stride']} | "
              f"{r['conv']} | {r['c_out']} | {r['rank']} | {r['ratio']:.3f} | {order[r['layer']]} |" for r in rows]
    return "\n".join(lines)


def plot_ranks(rows, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(1.1 * len(rows) + 2, 4))
    colors = ["tab:orange" if r["module"] == "C2fCIB" else "tab:blue" for r in rows]
    bars = ax.bar([f"{r['layer']}\n{r['part']}" for r in rows], [r["ratio"] for r in rows], color=colors)
    ax.bar_label(bars, [str(r["rank"]) for r in rows], fontsize=8)
    ax.set(ylabel="numerical rank r / C_out", xlabel="stage (layer index)", ylim=(0, 1.05), title=title)
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=c) for c in ("tab:blue", "tab:orange")],
              labels=["C2f", "C2fCIB"], loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def rank_report(model, out_dir, title, threshold=THRESHOLD):
    """Print the table and the CIB order; write rank.md, rank.json and rank.png under out_dir."""
    rows = stage_ranks(model, threshold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = format_table(rows)
    order = ", ".join(f"layer {r['layer']} ({r['ratio']:.3f})" for r in cib_order(rows))
    text = (f"{title}: intrinsic numerical rank (singular values > {threshold} x the largest) of the last "
            f"dense conv of each stage's last block\n\n{table}\n\nrank-guided CIB order (lowest rank first): {order}")
    print(text)
    (out_dir / "rank.md").write_text(text + "\n")
    (out_dir / "rank.json").write_text(json.dumps({"title": title, "threshold": threshold, "stages": rows,
                                                   "cib_order": [r["layer"] for r in cib_order(rows)]}, indent=1))
    plot_ranks(rows, out_dir / "rank.png", title)
    print(f"wrote {out_dir / 'rank.png'}, rank.md, rank.json")
    return rows
