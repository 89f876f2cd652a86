"""Shared output of the bench scripts: a Markdown table, the records as JSON, one plot panel per group."""
import os

from utils import UserError, first_line, read_json, versions, write_json


def run_label(model, prior, checkpoint):
    """'model / prior (run folder)': rows of several seeds of one model stay apart."""
    run = os.path.basename(os.path.dirname(os.path.abspath(checkpoint)))
    return f"{model} / {prior} ({run})"


def read_records(folder, render):
    """The records of a study in `folder` (NAME.json, by name). A record the report code cannot render
    alone (`render(record)`: a damaged or foreign file) is refused in one line naming it."""
    if not os.path.isdir(folder):
        return []
    records = []
    for name in sorted(f for f in os.listdir(folder) if f.endswith(".json")):
        path = os.path.join(folder, name)
        record = read_json(path, "record")
        try:
            render(record)
        except Exception as error:  # whatever a damaged record makes the report code raise
            raise UserError(f"record {path} is not one this code reads ({first_line(error)}); move it aside (its run "
                            f"is made again) or restore it") from error
        records.append(record)
    return records


def add_study_flags(parser, data_help, runs_dir):
    """The flags the training studies (multilevel.py, microstructure.py) share: where the data, the
    checkpoints and the results go, the device, committing, progress bars, the report alone."""
    parser.add_argument("--data_root", default="./data", help=data_help)
    parser.add_argument("--runs_dir", default=runs_dir, help="checkpoints (not committed)")
    parser.add_argument("--results", default="results", help="where the records, the report and the figures go")
    parser.add_argument("--device", default="auto", help="auto (the GPU if any), cpu or cuda")
    parser.add_argument("--commit", action="store_true", help="git-commit the results after each run")
    parser.add_argument("--progress", type=int, default=0, choices=[0, 1], help="1: progress bars")
    parser.add_argument("--summary_only", action="store_true", help="rewrite the report from the records, train nothing")


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
