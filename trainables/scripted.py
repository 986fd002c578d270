"""A scripted trainable: a known loss per mask and a known duration, with real checkpoints.

For tests and the round-overhead benchmark: it follows the candidate contract (reads ``mask``
and ``parent``, ends with a report carrying ``val_loss`` and a checkpoint) without training.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import ray
from ray import tune


def scripted_trainable(config: dict) -> None:
    """Reports ``landscape[mask]`` after ``duration`` seconds (or ``durations[duration_key(config)]``);
    fails for masks in ``fail``.

    Its checkpoint records its own mask, its process id and what it read from its parent's
    checkpoint, so tests can check warm-start plumbing and actor reuse end to end. With
    ``gather={"dir": ..., "sizes": {round: n}}``, a trial of such a round first waits until
    all ``n`` trials of its round (over all folds) have started, so they provably run at once (it
    fails after ``gather["timeout"]`` seconds, default 120). With
    ``started=DIR``, each trial touches ``DIR/<round>-<mask>`` as it begins (tests wait on it).
    With ``hold={"masks": [...], "seconds": s}``, a trial of such a mask first reports a
    resumable checkpoint (``partial``), then waits ``s`` seconds before it finishes. With
    ``finished=DIR``, each trial whose final report Tune took leaves a file in ``DIR`` named by its
    role, round, mask and extension (one per finish: a candidate trained twice leaves two; a trial
    killed before its report returned is retried, as it should be, and leaves one).
    """
    mask = config["mask"]
    own = tune.get_checkpoint()
    if own is not None:
        with own.as_directory() as directory:
            state = json.loads((Path(directory) / "state.json").read_text())
            if not state.get("partial"):  # finished before a driver crash: report the same result again
                tune.report(state["metrics"], checkpoint=tune.Checkpoint.from_directory(directory))
                return
    started = time.time()
    if config.get("started"):
        Path(config["started"]).mkdir(parents=True, exist_ok=True)
        Path(config["started"], f"{config.get('round')}-{mask}").touch()
    if size := config.get("gather", {}).get("sizes", {}).get(str(config.get("round"))):
        gather = config["gather"]
        _gather(Path(gather["dir"]) / str(config["round"]), f"{config.get('fold', 0)}-{mask}", size,
                gather.get("timeout", 120.0))  # fmt: skip
    parent_seen = None
    if config.get("parent"):
        with tune.Checkpoint(config["parent"]).as_directory() as parent:
            parent_seen = json.loads((Path(parent) / "state.json").read_text())["mask"]
    if mask in config.get("fail", ()):
        raise RuntimeError(f"scripted failure of {mask}")
    hold = config.get("hold", {})
    if mask in hold.get("masks", ()) and own is None:
        with tempfile.TemporaryDirectory() as directory:
            state = {"mask": mask, "parent_seen": parent_seen, "partial": True}
            (Path(directory) / "state.json").write_text(json.dumps(state))
            tune.report(
                {"val_loss": config["landscape"][mask]}, checkpoint=tune.Checkpoint.from_directory(directory)
            )
        time.sleep(hold["seconds"])
    time.sleep(config.get("durations", {}).get(duration_key(config), config.get("duration", 0.0)))
    with tempfile.TemporaryDirectory() as directory:
        metrics = {"val_loss": config["landscape"][mask], "started_at": started, "finished_at": time.time(),
                   "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}  # fmt: skip
        state = {"mask": mask, "parent_seen": parent_seen, "metrics": metrics, "resumed": own is not None}
        (Path(directory) / "state.json").write_text(json.dumps(state))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
    if config.get("finished"):  # after the report returned: Tune has the finish (a kill before it retries)
        name = f"{config.get('role')}-{config.get('round')}-{mask}-{config.get('extension')}-{os.getpid()}"
        Path(config["finished"]).mkdir(parents=True, exist_ok=True)
        Path(config["finished"], f"{name}-{time.time_ns()}").touch()


def duration_key(config: dict) -> str:
    """The key of ``config["durations"]`` (seconds per trial) for a trial: role, parent mask, mask."""
    return f"{config.get('role', 'search')}:{config.get('parent_mask')}>{config['mask']}"


def _gather(directory: Path, name: str, size: int, timeout: float = 120.0) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).touch()
    deadline = time.monotonic() + timeout
    while len(list(directory.iterdir())) < size:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(directory.iterdir()))} of {size} trials of the round started")
        time.sleep(0.05)


def scripted_elastic(config: dict) -> None:
    """A scripted trial that grows as a data-parallel one does, for the cluster model's check.

    It trains ``plan[duration_key(config)]`` epochs of ``epoch_seconds / speedup(workers)`` each
    (``DataParallel.speedup``: ``w * efficiency ** log2(w)``), after ``setup`` seconds, reporting
    ``epochs_left`` and ``epoch_seconds`` after each as :func:`fusionsearch.train.loop.fit` does
    (``epochs_left`` at most ``patience``: a trial that trains fewer epochs than its budget stops
    early). After an epoch that is not its last, it takes the workers the searcher granted it
    (``grants``), if more, after ``restart`` seconds (Ray Train's start and the setup again).

    A trial the searcher started under Ray Train (with ``grants``) asks Ray for its workers' GPUs
    as Ray Train does, outside Tune (a placement group of a GPU per worker, asked again wider to
    grow), and fails if they are not free within ``gpu_timeout`` seconds (an idle Tune actor
    holding one, say); any other trial trains on the GPU Tune gave it. ``worker_resource`` names
    another resource to ask for in place of ``GPU``; ``reported``, ``{round: seconds}``, the
    ``epoch_seconds`` a round's trials report in place of their own (tests steer the searcher's
    choice between Ray Train and Tune's actors with it); ``await_grant``, ``{duration key:
    seconds}``, how long such a trial waits after its first epoch for a grant (tests that must
    see a trial grow, however late a loaded machine starts the trials whose end frees the GPUs).
    """
    from ray.util.placement_group import placement_group, remove_placement_group

    from fusionsearch.tune.grants import granted
    from searchers.rounds import DataParallel

    speedup = DataParallel(efficiency=config["efficiency"]).speedup

    def gpus(count: int, held=None):
        if held is not None:
            remove_placement_group(held)
        group = placement_group([{config.get("worker_resource", "GPU"): 1}] * count)
        ray.get(group.ready(), timeout=config.get("gpu_timeout", 60.0))
        return group

    started = time.time()
    key = duration_key(config)
    epochs = config["plan"][key]
    workers, where = config.get("workers") or 1, config.get("grants")
    held = gpus(workers) if where else None
    time.sleep(config["setup"])
    grew = 0
    for epoch in range(1, epochs + 1):
        seconds = config["epoch_seconds"] / speedup(workers)
        time.sleep(seconds)
        left = min(epochs - epoch, config["patience"])
        reported = config.get("reported", {}).get(str(config.get("round")), seconds)
        tune.report({"val_loss": config["landscape"][config["mask"]], "epoch": epoch, "epochs_left": left,
                     "epoch_seconds": reported})  # fmt: skip
        wait = time.monotonic() + (config.get("await_grant", {}).get(key, 0.0) if epoch == 1 else 0.0)
        while epoch < epochs and where and (granted(where) or 0) <= workers and time.monotonic() < wait:
            time.sleep(0.1)
        if epoch < epochs and where and (more := granted(where) or 0) > workers:
            held = gpus(more, held)
            time.sleep(config["restart"])
            workers, grew = more, grew + 1
    if held is not None:
        remove_placement_group(held)
    with tempfile.TemporaryDirectory() as directory:
        metrics = {"val_loss": config["landscape"][config["mask"]], "started_at": started,
                   "finished_at": time.time(), "workers": workers, "grew": grew, "final": True,
                   "apart": bool(where), "pid": os.getpid()}  # fmt: skip
        (Path(directory) / "state.json").write_text(json.dumps({"mask": config["mask"], "metrics": metrics}))
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))
