"""What stopping hopeless candidates early would have saved: finished searches replayed under ASHA.

    python benchmarks/early_stop_replay.py fusionsearch-runs/xor-sfsa fusionsearch-runs/xor-exhaustive

Replays every search candidate's epoch reports (``<experiment>/<trial>/result.json``), in the
order they were reported, through Ray Tune's ``ASHAScheduler``: one scheduler per fold and
round, so that a candidate is only compared with its siblings (same parent, same validation
set), on the best validation loss so far. Prints, per experiment and setting, the candidates
that would have been stopped, the epochs and training seconds that would have been saved,
and every round whose winner (the candidate the search went on from, or chose) would have
been stopped: there the search would have taken another path and may have chosen another mask.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from fusionsearch.tune.driver import load_result


def epoch_reports(experiment: Path, trial_id: str) -> list[dict]:
    """A trial's per-epoch reports (epoch 0 = before any update), without the final one."""
    lines = (experiment / trial_id / "result.json").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "epoch" in r and not r.get("final")]


def replay(experiment: Path, grace: int, reduction: float) -> dict:
    """Replay ``experiment`` under ASHA(grace, reduction): what would stop, what it saves, what changes."""
    rows = [r for r in load_result(str(experiment)).table.to_pylist()
            if r["role"] == "search" and r["status"] == "ok"]  # fmt: skip
    reports = {r["trial_id"]: epoch_reports(experiment, r["trial_id"]) for r in rows}
    max_t = max(rep["epoch"] for reps in reports.values() for rep in reps)
    groups = defaultdict(list)
    for row in rows:
        groups[row["fold"], row["round"]].append(row)
    stopped: dict[str, tuple[int, float]] = {}  # trial id -> (epoch, best loss so far) at the stop
    changed = []
    for (fold, round_), members in sorted(groups.items()):
        if len(members) < 2 or max_t < grace:
            continue
        stopped |= replay_round(members, reports, max_t, grace, reduction)
        winner = min(members, key=lambda r: r["val_loss"])
        if winner["trial_id"] in stopped:
            epoch, loss = stopped[winner["trial_id"]]
            instead = min(members, key=lambda r: stopped.get(r["trial_id"], (0, r["val_loss"]))[1])
            changed.append(
                f"fold {fold} round {round_}: {winner['mask']} ({winner['val_loss']:.3f}) "
                f"stopped at epoch {epoch} (best {loss:.3f}), {instead['mask']} instead"
            )
    trained = [rep for reps in reports.values() for rep in reps if rep["epoch"] > 0]
    saved = [rep for t, (epoch, _) in stopped.items() for rep in reports[t] if rep["epoch"] > epoch]
    return {
        "candidates": len(rows),
        "stopped": len(stopped),
        "epochs": len(trained),
        "saved_epochs": len(saved),
        "seconds": sum(rep["time_this_iter_s"] for rep in trained),
        "saved_seconds": sum(rep["time_this_iter_s"] for rep in saved),
        "rounds": sum(len(m) > 1 for m in groups.values()),
        "changed": changed,
    }


def replay_round(
    members: list[dict], reports: dict[str, list[dict]], max_t: int, grace: int, reduction: float
) -> dict[str, tuple[int, float]]:
    """The siblings ASHA stops, fed their epochs in reporting order: trial id -> (epoch, best loss)."""
    scheduler = ASHAScheduler(
        time_attr="epoch",
        metric="best_val_loss",
        mode="min",
        max_t=max_t,
        grace_period=grace,
        reduction_factor=reduction,
        stop_last_trials=False,
    )
    trials = {r["trial_id"]: SimpleNamespace(trial_id=r["trial_id"]) for r in members}
    for trial in trials.values():
        scheduler.on_trial_add(None, trial)
    best = {t: reports[t][0]["val_loss"] for t in trials}  # epoch 0: the warm-started parent's loss
    events = sorted((r["started_at"] + rep["time_total_s"], r["trial_id"], rep)
                    for r in members for rep in reports[r["trial_id"]] if rep["epoch"] > 0)  # fmt: skip
    stopped = {}
    for _, trial_id, rep in events:
        if trial_id in stopped:
            continue
        best[trial_id] = min(best[trial_id], rep["val_loss"])
        result = {"epoch": rep["epoch"], "best_val_loss": best[trial_id]}
        if scheduler.on_trial_result(None, trials[trial_id], result) == TrialScheduler.STOP:
            stopped[trial_id] = (rep["epoch"], best[trial_id])
    return stopped


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("experiments", nargs="+", type=Path, help="finished searches' folders")
    parser.add_argument("--grace", type=int, nargs="+", default=[2, 4], help="first rungs (default: 2 4)")
    parser.add_argument("--reduction", type=float, nargs="+", default=[2, 3], help="factors (default: 2 3)")
    args = parser.parse_args()
    print(f"{'experiment':<16} {'grace':>5} {'rf':>4} {'stopped':>9} {'epochs saved':>14} "
          f"{'seconds saved':>16}  rounds whose winner is stopped")  # fmt: skip
    for experiment in args.experiments:
        for grace in args.grace:
            for reduction in args.reduction:
                r = replay(experiment, grace, reduction)
                stops = f"{r['stopped']}/{r['candidates']}"
                epochs = f"{r['saved_epochs']}/{r['epochs']}"
                seconds = f"{r['saved_seconds']:.0f}/{r['seconds']:.0f}"
                name = experiment.name
                row = f"{name:<16} {grace:>5} {reduction:>4g} {stops:>9} {epochs:>14} {seconds:>16}"
                print(f"{row}  {len(r['changed'])} of {r['rounds']}")
                for line in r["changed"]:
                    print(f"    {line}")


if __name__ == "__main__":
    main()
