"""The real trainable on Ray, and ``fusionsearch run / report / resume`` on tiny volumes."""

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import TINY_EVERY_FOLD, BaselineThenOne, cached_data
from conftest import TINY_RUN as TINY
from fusionsearch.cli import main
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.settings import ModelConfig, PreprocessConfig, RunSettings, TrainConfig, to_dict
from fusionsearch.tune.driver import load_result, read_run, run_search
from searchers import RoundSearcher


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("data"), SynthConfig(n=24, size=16, seed=1))


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_search_started_from_python_is_reported_and_resumed_from_the_cli(manifest, tmp_path, capsys):
    settings = RunSettings(
        data=cached_data(manifest, tmp_path / "cache", PreprocessConfig(shape=16)),
        model=ModelConfig(width=0.125),
        train=TrainConfig(epochs=2, patience=2, batch_size=8),
    )
    result = run_search(RoundSearcher(BaselineThenOne()), config={"settings": to_dict(settings)},
                        storage_path=tmp_path, name="py", resources={"cpu": 1})  # fmt: skip
    # The real trainable warm-starts a child exactly: its epoch 0 (before any update) is its parent's best.
    rows = {r["mask"]: r for r in result.table.to_pylist() if r["role"] == "search"}
    assert rows["0100"]["parent_mask"] == "0000" and rows["0100"]["status"] == "ok"
    progress = Path(result.experiment_dir, rows["0100"]["trial_id"], "result.json").read_text().splitlines()
    first = json.loads(progress[0])
    assert first["epoch"] == 0
    assert first["val_loss"] == pytest.approx(rows["0000"]["val_loss"], abs=1e-5)
    storage = ["--storage", str(tmp_path)]
    assert main(["report", "py", *storage]) == 0  # not evaluated yet: the candidates and the chosen mask
    assert "chosen mask:" in capsys.readouterr().out
    assert not (tmp_path / "py" / "report").exists()
    # resume: nothing left to train; it evaluates on the test part and writes the report.
    assert main(["resume", "py", *storage]) == 0
    out = capsys.readouterr().out
    assert "held-out test folds" in out and "late fusion (0000)" in out
    assert (tmp_path / "py" / "report" / "report.html").is_file()


@pytest.fixture(scope="module")
def every_fold(manifest, tmp_path_factory):
    """One finished 3-fold search with unimodal baselines (``cli``), its fold 0 mapped by
    ``fusionsearch saliency``, shared by the tests that only read it: (its storage, what the two
    commands printed)."""
    storage = tmp_path_factory.mktemp("every-fold") / "runs"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            ["run", "--data", str(manifest), "--storage", str(storage), "--name", "cli", *TINY_EVERY_FOLD]
        )
        assert code == 0
        assert main(["saliency", "cli", "--storage", str(storage), "--subjects", "2", "--device", "cpu"]) == 0
    return storage, printed.getvalue()


@pytest.mark.slow
def test_cli_run_evaluates_every_fold_and_writes_the_report(every_fold, manifest, tmp_path, capsys):
    runs, out = every_fold
    storage = str(runs)
    table = load_result(str(runs / "cli")).table.to_pylist()
    assert {r["fold"] for r in table} == {0, 1, 2}
    assert sorted((r["fold"], r["modality"]) for r in table if r["role"] == "unimodal") == [
        (f, m) for f in range(3) for m in ("FLAIR", "T1")
    ]
    chosen = sorted((r["fold"], r["mask"]) for r in table if r["chosen"])
    assert [f for f, _ in chosen] == [0, 1, 2]  # one chosen mask per fold
    assert read_run(str(runs / "cli")).max_concurrent == 1  # --max-concurrent, kept for a resume
    for method in ("unimodal T1", "unimodal FLAIR", "late fusion (0000)", "sfsa: chosen mask"):
        assert method in out
    assert "chosen mask: " in out and "exhaustive search: candidates" in out
    report = runs / "cli" / "report"
    page = (report / "report.html").read_text()
    assert page.count("<img") == 5 and page.count("data:image/png;base64,") == 5  # with the saliency maps
    assert all(mask in page for _, mask in chosen) and "sfsa: chosen mask" in page
    for name in ("results", "metrics_per_fold", "candidates", "cost", "landscape"):
        assert (report / f"{name}.csv").is_file() and (report / f"{name}.parquet").is_file()
    # The landscape: every mask the search trained, on every fold it trained it on, and no unimodal one.
    landscape = pq.read_table(report / "landscape.parquet").to_pylist()
    trained = {(r["fold"], r["mask"]) for r in table if r["role"] == "search" and r["status"] == "ok"}
    assert {(r["fold"], r["mask"]) for r in landscape} == trained and len(landscape) == len(trained)
    per_fold = pq.read_table(report / "metrics_per_fold.parquet").to_pylist()
    chosen_masks = dict(chosen)
    for r in per_fold:  # a method's metrics on a fold equal its mask's landscape entry (same checkpoint)
        if r["method"] == "chosen" or (r["method"] == "late fusion" and chosen_masks[r["fold"]] != r["mask"]):
            entry = next(e for e in landscape if (e["fold"], e["mask"]) == (r["fold"], r["mask"]))
            assert entry["accuracy"] == r["accuracy"] and entry["auc"] == r["auc"]
    markdown = (report / "report.md").read_text()
    assert "| method | mask | accuracy |" in markdown and "![Search tree](search_tree.png)" in markdown
    assert main(["report", "cli", "--storage", storage]) == 0
    assert "held-out test folds" in capsys.readouterr().out
    assert main(["compare", "cli", "cli", "--storage", storage, "--out", str(tmp_path / "cmp")]) == 0
    comparison = (tmp_path / "cmp" / "comparison.html").read_text()
    assert comparison.count("sfsa: chosen mask") == 2 and (tmp_path / "cmp" / "comparison.csv").is_file()
    # The same name again is refused, nothing is overwritten.
    assert main(["run", "--data", str(manifest), "--storage", storage, "--name", "cli", *TINY]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--data", "missing.csv"], "missing.csv does not exist"),
        (
            ["run", "--fusion", "concat", "--data", "{manifest}"],
            "fusion='concat' is not allowed; choose one of",
        ),
        (["run", "--data", "{manifest}", "--folds", "20"], "fewer than the 20 folds"),
        (["run", "--data", "{manifest}", "--modalities", "T1", "T2w"], "modalities ['T2w'] are not columns"),
        (["report", "nope"], "not a fusionsearch experiment"),
        (["compare", "nope", "other"], "not a fusionsearch experiment"),
        (["run", "--data", "{manifest}", "--folds", "3", "--fold", "3"], "fold=3: choose one of 0..2"),
        (
            ["run", "--data", "{manifest}", "--searcher", "beam", "--beam-width", "0"],
            "beam_width=0 must be >= 1",
        ),
        (["resume", "nope"], "no search to resume"),
        (["run", "--data", "{manifest}", "--noise-z", "2"], "--noise-z 2: this option was removed"),
        (["run", "--data", "{manifest}", "--alpha", "0"], "alpha=0.0 must be a false-accept rate"),
        (["run", "--data", "{manifest}", "--control", "both"], "control='both' is not allowed"),
        (["run", "--data", "{manifest}", "--augment", "heavy"], "augment='heavy' is not allowed"),
        (["run", "--data", "{manifest}", "--max-concurrent", "0"], "max_concurrent=0 must be a positive"),
        (["run", "--data", "{manifest}", "--min-delta", "-1"], "error: min_delta=-1.0 must be >= 0"),
        (["run", "--data", "{manifest}", "--weight-decay", "-1"], "weight_decay=-1.0 must be >= 0"),
    ],
)
def test_cli_bad_input_is_one_paragraph_and_exit_2(manifest, tmp_path, capsys, argv, message):
    argv = [a.replace("{manifest}", str(manifest)) for a in argv]
    if argv[0] == "run":
        argv += ["--cache", str(tmp_path / "cache")]
    assert main([*argv, "--storage", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists()  # nothing was built or trained


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_cli_search_over_block_fusion_points(manifest, tmp_path, capsys):
    storage = str(tmp_path / "runs")
    common = ["--data", str(manifest), "--storage", storage, "--points", "blocks", *TINY]
    argv = ["run", *common, "--name", "blocks", "--epochs", "1", "--patience", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rows = load_result(f"{storage}/blocks").table.to_pylist()
    assert {len(r["mask"]) for r in rows} == {8} and "00000000" in {r["mask"] for r in rows}
    round1 = [r for r in rows if r["round"] == 1 and not r["extension"]]
    assert sum(r["role"] == "search" for r in round1) == 8  # round 1: every one of the eight block points
    assert [r["mask"] for r in round1 if r["role"] == "control"] == ["00000000"]  # and the control
    assert (
        "exhaustive search: candidates" in out
        and (tmp_path / "runs" / "blocks" / "report" / "report.html").is_file()
    )
    assert main(["run", *common, "--searcher", "exhaustive"]) == 2
    assert "m=8 fusion points trains 255 masks per fold" in capsys.readouterr().err


@pytest.mark.slow
def test_random_and_optuna_rivals_train_their_budget_and_appear_in_compare(manifest, tmp_path, capsys):
    """Also replicates (the random search runs twice, --repeats 2, through table, report and compare)
    and the console: progress lines without -q, nothing but warnings and the answer with it."""
    storage = str(tmp_path / "runs")
    for searcher, budget, repeats in (("random", "3", 2), ("optuna", "4", 1)):
        cache = str(tmp_path / "cache")
        argv = ["run", "--data", str(manifest), "--storage", storage, "--name", searcher,
                "--searcher", searcher, "--budget", budget, "--cache", cache, "--repeats", str(repeats),
                *TINY]  # fmt: skip
        quiet = searcher == "optuna"  # -q after the command: no progress, no Tune output, the answer
        code = main(argv + ["-q"] * quiet)
        out, err = capsys.readouterr()
        assert code == 0, err
        if quiet:
            assert "Configuration for experiment" not in out + err and "View detailed results" not in out
            assert "chosen mask: " in out and " INFO " not in err and "fold 0  round " not in err
        else:
            assert "Configuration for experiment" in out  # Tune's own box, without -q
            assert "fold 0  round " in err  # the progress lines ...
            assert "epoch 0  val_loss" not in err  # ... but not every epoch, which needs -v
            assert "of 2 searches (1 fold(s) x 2 replicates)" in out
            assert "folds x replicates" in out
        rows = load_result(f"{storage}/{searcher}").table.to_pylist()
        for repeat in range(repeats):
            mine = [r for r in rows if r["repeat"] == repeat]
            assert len(mine) == len({r["mask"] for r in mine}) == int(budget) and mine[0]["mask"] == "0000"
            assert all(r["parent_mask"] == "0000" for r in mine[1:]) and sum(r["chosen"] for r in mine) == 1
        assert len(rows) == int(budget) * repeats
    # Replicates train with their own seeds: the same masks, other weights.
    random = load_result(f"{storage}/random").table.to_pylist()
    losses = {r["repeat"]: r["val_loss_all"] for r in random if r["mask"] == "0000"}
    assert losses[0] != losses[1]
    report = (tmp_path / "runs" / "random" / "report" / "report.md").read_text()
    assert "## Replicates: how much the answer owes to the seed" in report and "| 1 | " in report
    assert "random: chosen mask | " in report.split("## Replicates: held-out accuracy")[1]
    assert main(["compare", "random", "optuna", "--storage", storage, "--out", str(tmp_path / "cmp")]) == 0
    comparison = (tmp_path / "cmp" / "comparison.html").read_text()
    assert "random: chosen mask" in comparison and "optuna: chosen mask" in comparison
    replicated = (tmp_path / "cmp" / "comparison.md").read_text().split("## Replicates")[1]
    assert "| random | 2 | 2 | 1: " in replicated and "optuna" not in replicated
    # A budget where the searcher decides its own count is refused before anything starts.
    assert main(["run", "--data", str(manifest), "--storage", storage, "--budget", "5", *TINY]) == 2
    assert "budget=5: a budget applies to the random and optuna searchers" in capsys.readouterr().err


def _tensorboard_tags(path: Path) -> set[str]:
    """Scalar tags in a TensorBoard event file (TFRecord framing, tensorboardX's Event protobuf)."""
    from tensorboardX.proto.event_pb2 import Event

    data, tags, at = path.read_bytes(), set(), 0
    while at < len(data):
        length = int.from_bytes(data[at : at + 8], "little")
        event = Event.FromString(data[at + 12 : at + 12 + length])
        tags |= {value.tag for value in event.summary.value}
        at += 12 + length + 4
    return tags


@pytest.mark.slow
def test_candidates_are_tracked_in_mlflow_and_tensorboard(manifest, tmp_path, capsys, monkeypatch):
    from mlflow.tracking import MlflowClient

    tracking = (tmp_path / "mlruns").as_uri()
    argv = ["run", "--data", str(manifest), "--storage", str(tmp_path / "runs"), "--name", "tracked",
            "--mlflow", tracking, "--cache", str(tmp_path / "cache"), *TINY]  # fmt: skip
    # MLflow 3 refuses a file store unless asked: refused before anything starts, saying why.
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    assert main(argv) == 2
    assert f"--mlflow {tracking}: MLflow cannot log there" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "tracked").exists()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    assert main(argv) == 0, capsys.readouterr().err
    rows = load_result(str(tmp_path / "runs" / "tracked")).table.to_pylist()
    client = MlflowClient(tracking)
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert len(runs) == len(rows)  # one MLflow run per candidate
    params = {(r.data.params["mask"], r.data.params["fold"], r.data.params["round"]) for r in runs}
    assert params == {(r["mask"], str(r["fold"]), str(r["round"])) for r in rows}
    for run in runs:  # the validation loss of every epoch, epoch 0 (before any update) included
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert len(history) >= 3, [m.value for m in history]
    # Tune's own TensorBoard logger wrote every trial's metrics beside it.
    events = list((tmp_path / "runs" / "tracked").glob("*/events.out.tfevents.*"))
    assert len(events) == len(rows)
    assert all("ray/tune/val_loss" in _tensorboard_tags(e) for e in events)


PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images].map((img) => img.naturalWidth);
  const tables = [...document.querySelectorAll("table")].map((t) => t.rows.length);
  const headings = [...document.querySelectorAll("h2")].map((h) => h.textContent);
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({images, tables, headings});
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(every_fold, tmp_path):
    import re
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        pytest.skip("no chromium on this machine (.ci/run installs Debian's chromium when it runs as root)")
    report = every_fold[0] / "cli" / "report" / "report.html"
    probe = tmp_path / "probe.html"  # the report as written, plus a script that reads the page
    probe.write_text(report.read_text().replace("</body>", PROBE + "</body>"))
    browser = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    dom = subprocess.run(
        [*browser, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    )
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout)
    assert found, dom.stderr[-2000:]
    seen = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(seen["images"]) == 5 and all(width > 0 for width in seen["images"])  # every figure decodes
    assert "Where each modality looked" in seen["headings"]  # the saliency maps among them
    assert len(seen["tables"]) >= 3 and all(rows > 1 for rows in seen["tables"])  # header and rows
    screenshot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={screenshot}", "--window-size=1280,2400", report.as_uri()],
                   capture_output=True, timeout=120, check=True)  # fmt: skip
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def _manifest_of(source: Path, name: str, rows: list[str] | None = None, drop=(), add=None) -> Path:
    """A manifest beside ``source`` (its relative image paths still resolve) with some of its rows
    (``rows``: sample ids) and columns (``drop``; ``add``: {new column: copied column})."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    from fusionsearch.data.manifest import read_text_table

    table = read_text_table(source, infer=("label",))
    if rows is not None:
        table = table.filter(pc.is_in(table["sample_id"], pa.array(rows)))
    table = table.drop_columns(list(drop))
    for column, copied in (add or {}).items():
        table = table.append_column(column, table[copied])
    pacsv.write_csv(table, source.parent / name)
    return source.parent / name


@pytest.mark.slow
def test_saliency_maps_each_modality_of_the_chosen_mask_and_late_fusion_into_the_report(every_fold, capsys):
    from fusionsearch.report.saliency import read_saliency

    runs, out = every_fold
    maps = read_saliency(str(runs / "cli"))
    chosen = next(
        r["mask"] for r in load_result(str(runs / "cli")).table.to_pylist() if r["chosen"] and r["fold"] == 0
    )
    assert maps.methods == ("chosen", "late fusion") and maps.masks == (chosen, "0000")
    assert (
        maps.modalities == ("T1", "FLAIR")
        and len(maps.sample_ids) == 4
        and sorted(maps.labels) == [0, 0, 1, 1]
    )
    assert maps.maps.shape == (2, 4, 2, 16, 16) and maps.projections.shape == (2, 4, 2, 16, 16)
    assert np.abs(maps.maps.astype(np.float32)).max() > 0  # occluding something changed a prediction
    # Planted XOR data: every subject's findings, where it has them, scored for both models.
    assert maps.findings is not None and maps.findings.shape == (2 * 2, 2, 16, 16)
    rows = maps.score_rows
    assert rows and {r["method"] for r in rows} == {"chosen", "late fusion"}
    assert all(0 <= r["mass_inside"] <= 1 and 0 < r["volume_share"] < 0.2 for r in rows)
    assert "mapped 4 test subjects of fold 0 with chosen, late fusion" in out and "pointing-game hits" in out
    markdown = (runs / "cli" / "report" / "report.md").read_text()
    assert (
        "## Where each modality looked" in markdown
        and "![Where each modality looked](saliency.png)" in markdown
    )
    assert "| model | modality | subjects with findings |" in markdown
    for argv, message in (
        (
            ["--fold", "7"],
            "--fold 7: the search has no chosen configuration on that fold; choose one of [0, 1, 2]",
        ),
        (["--subjects", "0"], "--subjects 0: give at least 1 subject per class"),
        (["--patch", "17"], "--patch 17: the patch edge must be 1-16 voxels"),
    ):
        assert main(["saliency", "cli", "--storage", str(runs), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert read_saliency(str(runs / "cli")).sample_ids == maps.sample_ids  # a refused call changes nothing


@pytest.mark.slow
def test_predict_applies_the_chosen_configuration_to_new_subjects(every_fold, manifest, tmp_path, capsys):
    import numpy as np
    import pyarrow.csv as pacsv

    runs, _ = every_fold
    storage = ["--storage", str(runs)]
    held_out = pq.read_table(runs / "cli" / "predictions.parquet").to_pylist()
    fold1 = {r["sample_id"]: r["probabilities"] for r in held_out
             if (r["method"], r["fold"], r["repeat"]) == ("chosen", 1, 0)}  # fmt: skip
    # One fold's model on that fold's test subjects: exactly the report's held-out predictions.
    new = _manifest_of(manifest, "fold1-test.csv", rows=list(fold1))
    out = tmp_path / "one.csv"
    assert main(["predict", "cli", *storage, "--data", str(new), "--out", str(out), "--fold", "1"]) == 0
    printed = capsys.readouterr().out
    assert "with the chosen configuration of fold 1 (" in printed and "accuracy: " in printed
    rows = pacsv.read_csv(out).to_pylist()
    assert sorted(r["sample_id"] for r in rows) == sorted(fold1)
    for r in rows:
        assert [r["probability_0"], r["probability_1"]] == pytest.approx(fold1[r["sample_id"]], abs=1e-6)
        assert r["predicted"] == int(np.argmax(fold1[r["sample_id"]]))
    # No labels, no subjects: every fold's model, their mean and spread; no metrics.
    unlabelled = _manifest_of(manifest, "unlabelled.csv", drop=("label", "subject_id"))
    out = tmp_path / "all.csv"
    assert main(["predict", "cli", *storage, "--data", str(unlabelled), "--out", str(out)]) == 0
    assert "accuracy" not in capsys.readouterr().out
    table = pacsv.read_csv(out)
    assert table.num_rows == 24 and "label" not in table.column_names
    per_fold = np.stack([table[f"fold{k}_probability_1"].to_numpy() for k in range(3)])
    assert table["probability_1"].to_numpy() == pytest.approx(per_fold.mean(0))
    assert table["spread_1"].to_numpy() == pytest.approx(per_fold.std(0))


@pytest.mark.slow
def test_predict_refuses_bad_input_in_seconds_before_any_model_loads(every_fold, manifest, tmp_path, capsys):
    import shutil

    import nibabel as nib

    runs, _ = every_fold
    unfinished = runs / "unfinished"  # a search stopped before its evaluation
    unfinished.mkdir(exist_ok=True)
    for kept in ("fusionsearch-run.json", "candidates.parquet"):
        shutil.copy(runs / "cli" / kept, unfinished / kept)
    images = manifest.parent / "images"
    broken = images / "broken_T1.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    scan = nib.load(next(images.glob("*_T1.nii.gz")))
    coarse = scan.header.copy()
    coarse.set_zooms(tuple(2 * z for z in scan.header.get_zooms()))
    nib.save(nib.Nifti1Image(scan.get_fdata(), None, coarse), images / "coarse_T1.nii.gz")
    cases = [
        ("cli", _manifest_of(manifest, "no-flair.csv", drop=("FLAIR",)), "(missing: ['FLAIR'])"),
        ("cli", _manifest_of(manifest, "extra.csv", add={"T2w": "T1"}), "(not used: ['T2w'])"),
        ("unfinished", manifest, "has not finished"),
        ("nope", manifest, "is not a fusionsearch experiment"),
    ]
    zoom = float(scan.header.get_zooms()[0])
    voxels = f"voxels are {2 * zoom:g} x {2 * zoom:g} x {2 * zoom:g} mm, the search's were {zoom:g} x"
    wrong = (
        ("broken", broken, "not a readable NIfTI image"),
        ("coarse", images / "coarse_T1.nii.gz", voxels),
    )
    for column, target, message in wrong:
        table = _manifest_of(manifest, f"{column}.csv", rows=["synth-00000"])
        table.write_text(table.read_text().replace("images/synth-00000_T1.nii.gz", f"images/{target.name}"))
        cases.append(("cli", table, message))
    for name, data, message in cases:
        argv = [
            "predict",
            name,
            "--storage",
            str(runs),
            "--data",
            str(data),
            "--cache",
            str(tmp_path / "cache"),
        ]
        assert main([*argv, "--out", str(tmp_path / "p.csv")]) == 2, message
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
        assert not (tmp_path / "cache").exists() and not (tmp_path / "p.csv").exists()


@pytest.mark.slow
def test_export_runs_without_fusionsearch_and_predicts_as_predict_does(
    every_fold, manifest, tmp_path, capsys
):
    runs, _ = every_fold
    export = tmp_path / "export"
    assert main(["export", "cli", "--storage", str(runs), "--out", str(export)]) == 0
    assert {p.name for p in export.iterdir()} >= {
        "predict.py",
        "preprocessing.json",
        "MODEL_CARD.md",
        "fold0.pt2",
    }
    card = (export / "MODEL_CARD.md").read_text()
    assert "Held-out performance (chosen configuration).** accuracy" in card and "Intended use" in card
    assert "Each fold's model was trained on its fold's training part only" in card
    assert main(["export", "cli", "--storage", str(runs), "--out", str(export)]) == 2  # never overwritten
    capsys.readouterr()
    _check_export_predicts_as_predict(runs, export, manifest, tmp_path)


def _check_export_predicts_as_predict(runs: Path, export: Path, manifest: Path, tmp_path: Path) -> None:
    """The export at ``export``, run where fusionsearch cannot be imported, gives the class
    probabilities ``fusionsearch predict`` gives (with the models it chooses by default)."""
    import subprocess
    import sys

    import pyarrow.csv as pacsv

    from fusionsearch.data.cache import PreprocessCache
    from fusionsearch.data.manifest import read_manifest
    from fusionsearch.search.experiment import read_run

    # fusionsearch's own prediction of a few samples ...
    few = _manifest_of(manifest, "few.csv", rows=["synth-00000", "synth-00001", "synth-00002"])
    out = tmp_path / "p.csv"
    assert main(["predict", "cli", "--storage", str(runs), "--data", str(few), "--out", str(out)]) == 0
    expected = {
        r["sample_id"]: [r["probability_0"], r["probability_1"]] for r in pacsv.read_csv(out).to_pylist()
    }
    # ... and the export's, from the same preprocessed arrays, where fusionsearch cannot be imported.
    cache = PreprocessCache(
        manifest.parent / ".fusionsearch-cache", read_run(str(runs / "cli")).settings.data.preprocess
    )
    data = cache.open(read_manifest(few))
    arrays = []
    for sample, array in zip(data.ids, data.arrays, strict=True):
        np.save(tmp_path / f"{sample}.npy", np.asarray(array))
        arrays.append(str(tmp_path / f"{sample}.npy"))
    blocked = (
        "import runpy, sys\n"
        "sys.modules['fusionsearch'] = None\n"
        "try:\n    import fusionsearch\nexcept ImportError:\n    print('no fusionsearch')\n"
        f"sys.argv = ['predict.py', *{arrays!r}]\n"
        f"runpy.run_path({str(export / 'predict.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "no fusionsearch" and len(lines) == 4
    for line in lines[1:]:
        path, *values = line.split()
        assert [float(v) for v in values] == pytest.approx(expected[Path(path).stem], abs=1e-5)


@pytest.mark.slow
def test_final_model_trains_on_every_development_sample_and_predict_and_export_use_it(
    every_fold, manifest, tmp_path, capsys
):
    import math
    import shutil

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import torch

    from fusionsearch.data.splits import make_folds
    from fusionsearch.model.checkpoint import load_state_dict, read_meta
    from fusionsearch.report.final import Stage, plan_final, read_final
    from fusionsearch.search.experiment import read_candidates
    from fusionsearch.search.records import SCHEMA

    shared, _ = every_fold
    runs = tmp_path / "runs"  # a copy: the shared search keeps no final model
    shutil.copytree(shared / "cli", runs / "cli")
    # Its 2-epoch candidates learn nothing, so every fold chose 0000; as if folds 0 and 1 had
    # accepted their child 1000 at its first epoch (a lineage of two stages to retrace):
    table = pq.read_table(runs / "cli" / "candidates.parquet").to_pylist()
    for r in (r for r in table if r["fold"] < 2 and r["role"] == "search"):
        r["chosen"] = r["mask"] == "1000"
        r["best_epoch"] = 1.0 if r["mask"] == "1000" else r["best_epoch"]
    pq.write_table(pa.Table.from_pylist(table, schema=SCHEMA), runs / "cli" / "candidates.parquet")
    storage = ["--storage", str(runs)]
    (runs / "unfinished").mkdir()  # a search stopped before its evaluation
    for kept in ("fusionsearch-run.json", "candidates.parquet"):
        shutil.copy(runs / "cli" / kept, runs / "unfinished" / kept)
    for name, argv, message in [
        ("cli", ["--mask", "0110"], "--mask 0110: no fold chose it; choose one of the chosen masks"),
        ("unfinished", [], "has not finished"),
        ("nope", [], "is not a fusionsearch experiment"),
    ]:
        assert main(["final", name, *storage, "--device", "cpu", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert not (runs / "cli" / "final").exists()
    assert main(["final", "cli", *storage, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    final = read_final(str(runs / "cli"))
    rows = read_candidates(str(runs / "cli")).to_pylist()
    assert final.plan == plan_final(rows) and final.plan.chosen == (("1000", 2), ("0000", 1))
    best = {r["fold"]: r["best_epoch"] for r in rows if r["role"] == "search" and r["mask"] == "0000"}
    epochs = math.floor(np.median([best[0], best[1]]) + 0.5)  # the median over the folds that chose 1000
    assert final.plan.stages == (Stage("0000", epochs, (best[0], best[1])), Stage("1000", 1, (1, 1)))
    assert f"final model {final.mask}" in out and "every fold's test part included" in out
    # Every sample is a development sample with the rotating layout; nothing held out was left.
    assert sorted(final.samples) == sorted(f"synth-{i:05d}" for i in range(24))
    assert final.includes_test_parts and final.held_out_n == 0
    meta = read_meta(final.checkpoint)
    assert meta["mask"] == "1000" and meta["parent_mask"] == "0000" and meta["role"] == "final"
    assert meta["fold"] is None
    assert meta["metrics"]["epochs_trained"] == final.plan.stages[-1].epochs and meta["samples"] == 24
    # It trained: its weights are none of the folds' chosen models'.
    weights = load_state_dict(final.checkpoint)
    for row in (r for r in rows if r["chosen"] and r["mask"] == "1000"):
        fold_weights = load_state_dict(row["checkpoint"])
        assert any(not torch.equal(weights[k], fold_weights[k]) for k in weights)
    # Run again: nothing trains, nothing is overwritten.
    assert main(["final", "cli", *storage, "--device", "cpu"]) == 0
    assert read_final(str(runs / "cli")) == final
    # Interrupted before its record was written: only the missing stages train again.
    stored = sorted((runs / "cli" / "final").glob("stage*"))
    kept = stored[0] / "model.pt"
    before = kept.stat().st_mtime_ns
    (runs / "cli" / "final" / "final.json").unlink()
    assert [p.name for p in stored] == ["stage0-0000", "stage1-1000"]
    shutil.rmtree(stored[-1])
    assert main(["final", "cli", *storage, "--device", "cpu"]) == 0
    assert kept.stat().st_mtime_ns == before
    again = read_final(str(runs / "cli"))
    retrained = load_state_dict(again.checkpoint)  # the same seeds and batches: the same weights
    assert again.plan == final.plan and all(torch.equal(retrained[k], weights[k]) for k in weights)
    capsys.readouterr()
    # predict uses the final model, and says which samples it trained on; --folds the folds' models.
    out_csv = tmp_path / "final.csv"
    assert main(["predict", "cli", *storage, "--data", str(manifest), "--out", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert f"the final model ({final.mask})" in printed and "trained on 24 of these samples" in printed
    table = pacsv.read_csv(out_csv)
    assert "final_probability_1" in table.column_names and "fold0_probability_1" not in table.column_names
    assert table["spread_1"].to_numpy() == pytest.approx(0.0)
    assert main(["predict", "cli", *storage, "--data", str(manifest), "--out", str(out_csv), "--folds"]) == 0
    assert "fold0_probability_1" in pacsv.read_csv(out_csv).column_names
    assert "trained on" not in capsys.readouterr().out
    # export takes the final model too; it runs without fusionsearch and predicts as predict does.
    export = tmp_path / "export"
    assert main(["export", "cli", *storage, "--out", str(export)]) == 0
    assert (export / "final.pt2").is_file() and not (export / "fold0.pt2").exists()
    card = (export / "MODEL_CARD.md").read_text()
    assert (
        "The final model (`fusionsearch final`), 1000 (chosen: 1000 on 2 fold(s), 0000 on 1 fold(s)), "
        in card
    )
    assert "was trained on 24 development samples" in card
    report = (runs / "cli" / "report" / "report.html").read_text()  # rewritten with the final model
    assert "The final model</h2>" in report and "was trained on 24 development samples" in report
    assert "no sample is held out from this model" in card
    _check_export_predicts_as_predict(runs, export, manifest, tmp_path)
    # Had the search been pooled (the reserved layout), part 0 would stay out and test the model.
    shutil.copytree(runs / "cli", runs / "pooled", ignore=shutil.ignore_patterns("final"))
    record = json.loads((runs / "pooled" / "fusionsearch-run.json").read_text())
    record["settings"]["data"]["layout"] = "reserved"
    (runs / "pooled" / "fusionsearch-run.json").write_text(json.dumps(record))
    assert main(["final", "pooled", *storage, "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    pooled = read_final(str(runs / "pooled"))
    index = pq.read_table(record["settings"]["data"]["index"]).to_pydict()
    part0 = {
        index["sample_id"][i]
        for i in make_folds(index["label"], index["subject_id"], 3, 0, "reserved")[0].test
    }
    assert pooled.held_out_n == len(part0) > 0 and not part0 & set(pooled.samples)
    assert len(pooled.samples) + len(part0) == 24 and not pooled.includes_test_parts
    assert (
        set(pooled.held_out) == {"accuracy", "auc"}
        and f"reserved test part ({len(part0)} samples)" in printed
    )
    value, low, high = pooled.held_out["accuracy"]
    assert 0 <= low <= value <= high <= 1
