"""Shared output of the bench scripts: a Markdown table, the records as JSON, one plot panel per group."""
import os

from utils import versions, write_json


def run_label(model, prior, checkpoint):
    """'model / prior (run folder)': rows of several seeds of one model stay apart."""
    run = os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))
    return f"{model} / {prior} ({run})"


def write_report(output, lines, records, seed, group_key, draw_panel):
    """OUTPUT (Markdown lines), OUTPUT.json ({records, seed, versions}) and OUTPUT.png, whose
    panels are draw_panel(ax, rows) for the rows of each value of group_key(row), in order."""
    base = os.path.splitext(output)[0]
    with open(output, "w") as f:
        f.write("\n".join(lines) + "\n")
    write_json({"results": records, "seed": seed, "versions": versions()}, base + ".json")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(group_key(r) for r in records))
    n_cols = min(3, len(groups))  # rows of three panels stay readable
    n_rows = -(-len(groups) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.5 * n_cols, 3.4 * n_rows), squeeze=False)
    for ax, group in zip(axes.flat, groups):
        draw_panel(ax, [r for r in records if group_key(r) == group])
        ax.legend(fontsize=7)
    for ax in axes.flat[len(groups):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(base + ".png", dpi=120)
    plt.close(fig)
