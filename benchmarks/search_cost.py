"""SFSA vs its rivals on planted benchmarks: candidates, compute and held-out accuracy.

    python benchmarks/search_cost.py --n 400 --size 24 --folds 3 --epochs 12 --patience 8 \\
        --width 0.25 --lr 3e-3

    python benchmarks/search_cost.py --searchers sfsa random optuna --seeds 0 1 2 ...   # equal budget

Runs ``fusionsearch run`` once per searcher on the same generated data and settings (options
this script does not know are passed to ``fusionsearch run``), then prints, per searcher:
candidates trained, compute (CPU- or GPU-hours), wall time, and the held-out test accuracy
of the chosen mask (mean ± std over folds), with the chosen masks. Unimodal baselines are
skipped (they cost the same for every searcher).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import tempfile
from pathlib import Path

from fusionsearch import storage
from fusionsearch.cli import main as fusionsearch
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.report.data import chosen_frequency, load_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="planted samples (default: 400)")
    parser.add_argument("--synth-size", type=int, default=32, help="generated cube edge (default: 32)")
    parser.add_argument("--searchers", nargs="+", default=["sfsa", "beam", "exhaustive"])
    parser.add_argument("--tasks", nargs="+", default=["xor"], help="planted tasks (default: xor)")
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="data and training seeds (default: 0)"
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="random/optuna candidates per fold (default: what SFSA trained per fold on the same data, "
        "rounded up, when sfsa runs first; else their own default)",
    )
    parser.add_argument(
        "--storage", default=None, help="keep the searches here (default: a temporary folder)"
    )
    args, run_options = parser.parse_known_args()

    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = args.storage or scratch
        for task in args.tasks:
            for seed in args.seeds:
                data = Path(base) / f"planted-{task}-{seed}"
                manifest = generate(data, SynthConfig(n=args.n, size=args.synth_size, task=task, seed=seed))
                sfsa_per_fold = None
                for searcher in args.searchers:
                    name = f"cost-{task}-{seed}-{searcher}"
                    argv = ["run", "--data", str(manifest), "--searcher", searcher, "--storage", base,
                            "--name", name, "--seed", str(seed), "--no-unimodal", *run_options]  # fmt: skip
                    budget = args.budget or sfsa_per_fold
                    if searcher in ("random", "optuna") and budget:
                        argv += ["--budget", str(budget)]
                    with contextlib.redirect_stdout(io.StringIO()):
                        if fusionsearch(argv) != 0:
                            raise SystemExit(f"fusionsearch {' '.join(argv)} failed")
                    evaluation = load_evaluation(storage.join(storage.normalise(base), name))
                    chosen = next(r for r in evaluation.results.to_pylist() if r["method"] == "chosen")
                    frequency = chosen_frequency(evaluation.candidates)
                    masks = ", ".join(f"{m} x{n}" for m, n in frequency.most_common())
                    if searcher == "sfsa":
                        folds = len(set(evaluation.candidates["fold"].to_pylist()))
                        sfsa_per_fold = math.ceil(evaluation.cost.search_candidates / folds)
                    rows.append((task, seed, searcher, evaluation.cost, chosen, masks))
    unit = rows[0][3].unit
    print(f"{'task':<12} {'seed':>4} {'searcher':<11} {'candidates':>10} {unit:>10} {'wall min':>9} "
          f"{'test accuracy':>15}  chosen masks")  # fmt: skip
    for task, seed, searcher, cost, chosen, masks in rows:
        accuracy = f"{chosen['accuracy_mean']:.3f} ± {chosen['accuracy_std']:.3f}"
        spent = f"{cost.search_candidates:>10} {cost.search_compute:>10.3f} {cost.wall_hours * 60:>9.1f}"
        print(f"{task:<12} {seed:>4} {searcher:<11} {spent} {accuracy:>15}  {masks}")
    if len(args.seeds) > 1:
        print(f"\nmean over seeds {args.seeds}:")
        for task in args.tasks:
            for searcher in args.searchers:
                mine = [(c, r) for t, _, s, c, r, _ in rows if (t, s) == (task, searcher)]
                accuracy = statistics.mean(r["accuracy_mean"] for _, r in mine)
                spread = statistics.stdev(r["accuracy_mean"] for _, r in mine)
                candidates = statistics.mean(c.search_candidates for c, _ in mine)
                print(f"{task:<12} {searcher:<11} candidates {candidates:6.1f}  "
                      f"test accuracy {accuracy:.3f} ± {spread:.3f} (std over seeds)")  # fmt: skip
    for task in args.tasks:
        for seed in args.seeds:
            exhaustive = next(
                (c for t, e, s, c, _, _ in rows if (t, e, s) == (task, seed, "exhaustive")), None
            )
            for t, e, searcher, cost, _, _ in rows:
                if exhaustive and (t, e) == (task, seed):
                    share = cost.search_compute / exhaustive.search_compute
                    print(f"{task} seed {seed} {searcher}: {share:.2f} of exhaustive compute")


if __name__ == "__main__":
    main()
