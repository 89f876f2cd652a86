"""Mutation testing of the modules whose formulas the suite must guard; writes results/mutation.md.

    python bench/mutation.py                 # mutmut run (its config is setup.cfg), then the report
    python bench/mutation.py --report_only   # the report from mutmut's last run

mutmut (3.x) copies the project into mutants/, changes one operator, constant, call or string at
a time (a "mutant") and runs the tests that cover the changed function (setup.cfg names them).
A mutant is killed when a test fails (or times out), and survives otherwise. Some survivors
are equivalent: the change cannot alter any result (a chunk size, a device=None on a CPU
tensor). Those are judged by hand and listed with the reason in bench/mutation_equivalent.txt
("NAME: reason" lines). Score of a module: killed / (mutants - judged equivalent).
mutmut keeps the results of functions whose code did not change since its last run (in mutants/);
survivors are always tested again, so the report follows today's tests. `rm -r mutants` starts
from scratch. Not part of CI (from scratch it takes one to two hours on 2 cores).
"""
import argparse
import collections
import datetime
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from utils import versions  # noqa: E402

EQUIVALENT_FILE = os.path.join(ROOT, "bench", "mutation_equivalent.txt")
KILLED = ("killed", "timeout", "segfault")  # a mutant that makes the suite hang or crash is caught too


def module_of(mutant):
    """'priors.operators.x_symbol__mutmut_3' -> 'priors.operators' (methods: 'x\u01c1Class\u01c1name')."""
    return mutant.split(".x")[0] if ".x" in mutant else mutant.rsplit(".", 1)[0]


def read_results(lines):
    """{mutant name: status} from the lines of `mutmut results --all true`."""
    statuses = {}
    for line in lines:
        name, sep, status = line.strip().rpartition(": ")
        if sep and "mutmut_" in name:
            statuses[name] = status.strip()
    return statuses


def read_equivalent(path=EQUIVALENT_FILE):
    """{mutant name: why it cannot change a result}."""
    if not os.path.exists(path):
        return {}
    judged = {}
    for line in open(path):
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.partition(":")
            judged[name.strip()] = reason.strip()
    return judged


def scores(statuses, equivalent):
    """Per module: mutants, killed, survived (not judged equivalent), equivalent, score."""
    table = collections.defaultdict(lambda: collections.Counter())
    for name, status in statuses.items():
        row = table[module_of(name)]
        row["mutants"] += 1
        if status in KILLED:
            row["killed"] += 1
        elif name in equivalent:
            row["equivalent"] += 1
        else:
            row["survived"] += 1
    for row in table.values():
        judged = row["mutants"] - row["equivalent"]
        row["score"] = row["killed"] / judged if judged else 1.0
    return dict(sorted(table.items()))


def mutant_diff(name):
    """The changed lines of one mutant (`mutmut show`), for the report."""
    shown = subprocess.run(["mutmut", "show", name], cwd=ROOT, capture_output=True, text=True).stdout
    return [line for line in shown.splitlines()
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def report(statuses, equivalent, command, show_diffs=True):
    table = scores(statuses, equivalent)
    lines = ["# Mutation testing", "",
             f"Command: `{command}` (mutmut, config in `setup.cfg`), {datetime.date.today()}; torch "
             f"{versions()['torch']}, Python {versions()['python']}. A mutant is killed when a selected test "
             f"fails or times out; survivors judged equivalent (they cannot change a result) are listed below "
             f"with the reason and left out of the score: killed / (mutants - equivalent).", "",
             "| module | mutants | killed | survived | judged equivalent | score |", "|---|---|---|---|---|---|"]
    for module, row in table.items():
        lines.append(f"| {module} | {row['mutants']} | {row['killed']} | {row['survived']} | "
                     f"{row['equivalent']} | {100 * row['score']:.1f}% |")
    total = collections.Counter()
    for row in table.values():
        total.update({k: v for k, v in row.items() if k != "score"})
    judged = total["mutants"] - total["equivalent"]
    lines.append(f"| all | {total['mutants']} | {total['killed']} | {total['survived']} | {total['equivalent']} | "
                 f"{100 * total['killed'] / max(judged, 1):.1f}% |")
    survivors = [n for n, s in statuses.items() if s not in KILLED and n not in equivalent]
    lines += ["", f"## Surviving mutants not judged equivalent ({len(survivors)})", ""]
    for name in survivors:
        diff = " / ".join(f"`{d.strip()}`" for d in mutant_diff(name)) if show_diffs else ""
        lines.append(f"- {name} ({statuses[name]}) {diff}")
    judged_here = [n for n in statuses if n in equivalent and statuses[n] not in KILLED]
    lines += ["", f"## Survivors judged equivalent ({len(judged_here)})", ""]
    lines += [f"- {name}: {equivalent[name]}" for name in judged_here]
    return "\n".join(lines) + "\n", table


def list_results():
    """The lines of `mutmut results --all true` (one mutant and its status a line)."""
    return subprocess.run(["mutmut", "results", "--all", "true"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--report_only", action="store_true", help="only write the report of the last run")
    parser.add_argument("--max_children", type=int, default=1, help="mutants tested at once (one per core)")
    parser.add_argument("--output", default=os.path.join(ROOT, "results", "mutation.md"), help="the report")
    args = parser.parse_args()
    command = "python bench/mutation.py" + (" --report_only" if args.report_only else "")
    if not args.report_only:
        subprocess.run(["mutmut", "run", "--max-children", str(args.max_children)], cwd=ROOT, check=True)
        # mutmut keeps a function's results while its code is unchanged, also when tests were added
        # since: survivors (and mutants that had no test) are tested again against today's suite
        again = [name for name, status in read_results(list_results()).items() if status in ("survived", "no tests")]
        if again:
            subprocess.run(["mutmut", "run", "--max-children", str(args.max_children), *again], cwd=ROOT, check=True)
    listed = list_results()
    text, table = report(read_results(listed), read_equivalent(), command)
    with open(args.output, "w") as f:
        f.write(text)
    for module, row in table.items():
        print(f"{module}: {100 * row['score']:.1f}% ({row['killed']} of {row['mutants']} killed, "
              f"{row['equivalent']} judged equivalent)")
    print(f"written {args.output}")


if __name__ == "__main__":
    main()
