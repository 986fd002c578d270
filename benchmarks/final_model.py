"""The final model against the folds' models, on an independent cohort of the same planted task.

    python benchmarks/final_model.py --tasks xor --seeds 10 11 --storage runs/final \\
        --n 400 --synth-size 16 --size 16 --folds 3 --epochs 12 --patience 8 --width 0.25 --lr 3e-3

Per task and seed: generates ``--n`` development samples, runs a search over every fold
(options this script does not know go to ``fusionsearch run``), trains its final model
(``fusionsearch final``), generates an independent cohort of ``--cohort`` samples (another
seed, never seen by the search), and predicts it with the final model, with the folds' models
as an ensemble and with each fold's model alone. Prints accuracy and AUC with 95 % bootstrap
intervals, and McNemar's exact p of the final model against the ensemble; with the reserved
layout (``--pooled``) also the final model's figures on the reserved part.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np

from fusionsearch import pipeline, storage
from fusionsearch.cli import main as fusionsearch
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.report.statistics import METRIC_FUNCTIONS, bootstrap_interval, mcnemar

#: The independent cohort's seed is the development seed plus this.
COHORT_SEED = 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=400, help="development samples (default: 400)")
    parser.add_argument("--cohort", type=int, default=400, help="independent samples (default: 400)")
    parser.add_argument("--synth-size", type=int, default=16, help="generated cube edge (default: 16)")
    parser.add_argument("--tasks", nargs="+", default=["xor"], help="planted tasks (default: xor)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="data and training seeds")
    parser.add_argument("--device", default=None, help="cpu or cuda for final and predict")
    parser.add_argument("--storage", default=None, help="keep everything here (default: a temporary folder)")
    args, run_options = parser.parse_known_args()

    print(f"{'task':<12} {'seed':>4} {'models':<24} {'accuracy (95% CI)':>24} {'AUC (95% CI)':>24}")
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.storage or scratch)
        for task in args.tasks:
            for seed in args.seeds:
                for line in measure(base, task, seed, args, run_options):
                    print(line, flush=True)


def measure(base: Path, task: str, seed: int, args: argparse.Namespace, run_options: list[str]) -> list[str]:
    """One search, its final model, and the table rows of their predictions on a new cohort."""
    name = f"final-{task}-{seed}"
    manifest = generate(
        base / f"planted-{task}-{seed}", SynthConfig(n=args.n, size=args.synth_size, task=task, seed=seed)
    )
    cohort = generate(
        base / f"cohort-{task}-{seed}",
        SynthConfig(n=args.cohort, size=args.synth_size, task=task, seed=seed + COHORT_SEED),
    )
    if not storage.exists(storage.join(str(base), name, "predictions.parquet")):
        argv = ["run", "--data", str(manifest), "--storage", str(base), "--name", name, "--seed", str(seed),
                "--no-unimodal", *run_options]  # fmt: skip
        with contextlib.redirect_stdout(io.StringIO()):
            if fusionsearch(argv) != 0:
                raise SystemExit(f"fusionsearch {' '.join(argv)} failed")
    final = pipeline.final(name, base, device=args.device)
    stages = " -> ".join(f"{s.mask}x{s.epochs}" for s in final.plan.stages)
    rows = [f"{task:<12} {seed:>4} final {final.mask}: {stages}, chosen {final.plan.chosen}"]
    options = {"device": args.device, "cache": str(base / "cohort-cache")}
    ours = pipeline.predict(name, cohort, base, **options)
    ensemble = pipeline.predict(name, cohort, base, folds=True, **options)
    truth = np.asarray(ours.table["label"].to_pylist())
    right = {}
    for label, prediction, column in [
        ("final model", ours, "probability"),
        ("folds' ensemble", ensemble, "probability"),
        *[(f"fold {m.fold} ({m.mask})", ensemble, f"fold{m.fold}_probability") for m in ensemble.models],
    ]:
        p = np.stack([prediction.table[f"{column}_{c}"].to_numpy() for c in range(2)], axis=1)
        right[label] = p.argmax(1) == truth
        rows.append(
            f"{'':<17} {label:<24} {_figure(truth, p, 'accuracy'):>24} {_figure(truth, p, 'auc'):>24}"
        )
    only_final, only_ensemble, p_value = mcnemar(right["final model"], right["folds' ensemble"])
    rows.append(f"{'':<17} final vs ensemble: {only_final} right only by final, {only_ensemble} only by "
                f"the ensemble, McNemar p = {p_value:.3g}")  # fmt: skip
    for metric, (value, low, high) in final.held_out.items():
        rows.append(
            f"{'':<17} reserved part ({final.held_out_n}): {metric} {value:.3f} [{low:.3f}, {high:.3f}]"
        )
    return rows


def _figure(truth: np.ndarray, probabilities: np.ndarray, metric: str) -> str:
    low, high = bootstrap_interval(truth, probabilities, metric)
    return f"{METRIC_FUNCTIONS[metric](truth, probabilities):.3f} [{low:.3f}, {high:.3f}]"


if __name__ == "__main__":
    main()
