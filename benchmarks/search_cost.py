"""SFSA vs beam vs exhaustive search on the planted XOR benchmark: cost and held-out accuracy.

    python benchmarks/search_cost.py --n 400 --size 24 --folds 3 --epochs 12 --patience 8 \\
        --width 0.25 --lr 3e-3

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
import tempfile
from pathlib import Path

from fusionsearch import storage
from fusionsearch.cli import main as fusionsearch
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.report.pages import chosen_frequency, load_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="planted samples (default: 400)")
    parser.add_argument("--synth-size", type=int, default=32, help="generated cube edge (default: 32)")
    parser.add_argument("--searchers", nargs="+", default=["sfsa", "beam", "exhaustive"])
    parser.add_argument(
        "--storage", default=None, help="keep the searches here (default: a temporary folder)"
    )
    args, run_options = parser.parse_known_args()

    with tempfile.TemporaryDirectory() as scratch:
        base = args.storage or scratch
        manifest = generate(Path(base) / "planted", SynthConfig(n=args.n, size=args.synth_size))
        rows = []
        for searcher in args.searchers:
            name = f"cost-{searcher}"
            argv = ["run", "--data", str(manifest), "--searcher", searcher, "--storage", base, "--name", name,
                    "--no-unimodal", *run_options]  # fmt: skip
            with contextlib.redirect_stdout(io.StringIO()):
                if fusionsearch(argv) != 0:
                    raise SystemExit(f"fusionsearch {' '.join(argv)} failed")
            evaluation = load_evaluation(storage.join(storage.normalise(base), name))
            chosen = next(r for r in evaluation.results.to_pylist() if r["method"] == "chosen")
            masks = ", ".join(f"{m} x{n}" for m, n in chosen_frequency(evaluation.candidates).most_common())
            rows.append((searcher, evaluation.cost, chosen, masks))
    unit = rows[0][1].unit
    print(
        f"{'searcher':<11} {'candidates':>10} {unit:>10} {'wall min':>9} {'test accuracy':>15}  chosen masks"
    )
    for searcher, cost, chosen, masks in rows:
        accuracy = f"{chosen['accuracy_mean']:.3f} ± {chosen['accuracy_std']:.3f}"
        print(f"{searcher:<11} {cost.search_candidates:>10} {cost.search_compute:>10.3f} "
              f"{cost.wall_hours * 60:>9.1f} {accuracy:>15}  {masks}")  # fmt: skip
    exhaustive = next((c for s, c, _, _ in rows if s == "exhaustive"), None)
    if exhaustive:
        for searcher, cost, _, _ in rows:
            share = cost.search_compute / exhaustive.search_compute
            print(f"{searcher}: {share:.2f} of exhaustive compute")


if __name__ == "__main__":
    main()
