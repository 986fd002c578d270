from pathlib import Path

from fusionsearch.cli import main
from fusionsearch.data.bids import import_bids
from fusionsearch.data.manifest import read_manifest
from trees import ds004199_tree, oasis_tree


def rows(table):
    return {r["sample_id"]: r for r in table.to_pylist()}


def test_ds004199_import(tmp_path):
    root = ds004199_tree(tmp_path / "ds004199")
    table, report = import_bids(root, ["T1w", "FLAIR"], positive=["fcd"], relative_to=tmp_path)
    got = rows(table)
    assert sorted(got) == ["sub-00001", "sub-00002", "sub-00004", "sub-00006"]
    assert table.column_names == ["sample_id", "subject_id", "label", "T1w", "FLAIR"]
    assert {s: r["label"] for s, r in got.items()} == {
        "sub-00001": 1, "sub-00002": 0, "sub-00004": 0, "sub-00006": 1
    }  # fmt: skip
    # Suffix matching: the ROI mask is not a FLAIR image; the finer of two T1w candidates wins.
    assert got["sub-00001"]["FLAIR"] == "ds004199/sub-00001/anat/sub-00001_acq-T2sel_FLAIR.nii.gz"
    assert got["sub-00004"]["T1w"].endswith("sub-00004_acq-iso08_T1w.nii.gz")
    assert dict(report.skipped) == {
        "sub-00003": "no FLAIR image (*_FLAIR.nii[.gz])",
        "sub-00005": "no label",
    }
    [choice] = report.choices
    assert "sub-00004 T1w" in choice and "finest" in choice and "sag111" in choice
    assert report.class_counts == {1: 2, 0: 2}


def test_oasis_sessions_and_labels_file(tmp_path):
    root, labels = oasis_tree(tmp_path / "oasis")
    table, report = import_bids(
        root,
        ["T1w", "T2w"],
        positive=["0.5", "1", "2", "3"],
        negative=["0"],
        label_column="cdr",
        labels_file=labels,
        participant_column="subject",
        session_column="session",
        relative_to=tmp_path,
    )
    got = rows(table)
    assert sorted(got) == ["sub-OAS30001_ses-d0129", "sub-OAS30001_ses-d0800", "sub-OAS30002_ses-d0100",
                           "sub-OAS30003_ses-d0001"]  # fmt: skip
    # Labels join on participant AND session; numeric values compare as numbers (1.0 == 1).
    assert [got[s]["label"] for s in sorted(got)] == [0, 1, 1, 0]
    assert got["sub-OAS30001_ses-d0800"]["subject_id"] == "sub-OAS30001"
    assert got["sub-OAS30001_ses-d0800"]["session_id"] == "d0800"
    assert dict(report.skipped) == {"sub-OAS30002_ses-d0500": "no T2w image (*_T2w.nii[.gz])"}


def test_cli_import_writes_manifest_and_prints_report(tmp_path, capsys):
    root = ds004199_tree(tmp_path / "ds")
    out = tmp_path / "out" / "manifest.csv"
    code = main(["data", "import-bids", str(root), "--modalities", "T1w", "FLAIR", "--positive", "fcd",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "imported 4 sample(s) (class 0: 2, class 1: 2)" in printed
    assert "skipped sub-00003: no FLAIR" in printed and "skipped sub-00005: no label" in printed
    manifest = read_manifest(out)
    assert manifest.modalities == ["T1w", "FLAIR"]
    # Relative paths resolve against the manifest's folder.
    assert all(p.is_file() for row in range(len(manifest)) for p in manifest.paths(row).values())
    assert not Path(manifest.table["T1w"][0].as_py()).is_absolute()
    # The images are outside the manifest's folder: the import says how to validate it.
    assert f"--data-root {root}" in printed
    assert main(["data", "validate", str(out), "--folds", "2"]) == 2
    assert "outside the dataset root" in capsys.readouterr().err
    assert main(["data", "validate", str(out), "--folds", "2", "--data-root", str(root)]) == 0


def test_cli_import_missing_label_column_is_clear(tmp_path, capsys):
    root = ds004199_tree(tmp_path / "ds")
    code = main(["data", "import-bids", str(root), "--modalities", "T1w", "--positive", "fcd",
                 "--label-column", "diagnosis", "--out", str(tmp_path / "m.csv")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "no column 'diagnosis'" in err and "--label-column" in err and "Traceback" not in err
