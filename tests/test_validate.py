import gzip

import nibabel as nib
import numpy as np
import pytest

from fusionsearch.cli import main
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.validate import validate_manifest
from fusionsearch.errors import DataError
from trees import write_volume

HEADER = "sample_id,subject_id,label,T1w,FLAIR\n"


def dataset(tmp_path, n=6, rows=None):
    """A valid manifest of ``n`` subjects alternating labels 0/1; ``rows`` overrides lines."""
    lines = []
    for i in range(n):
        t1 = write_volume(tmp_path / f"s{i}_T1w.nii.gz", seed=i)
        flair = write_volume(tmp_path / f"s{i}_FLAIR.nii.gz", seed=100 + i)
        lines.append(f"s{i},subj{i},{i % 2},{t1.name},{flair.name}")
    for index, line in (rows or {}).items():
        lines[index] = line
    path = tmp_path / "manifest.csv"
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def validate(path, folds=3):
    code = main(["data", "validate", str(path), "--folds", str(folds)])
    return code


def error_of(path, capsys, folds=3):
    assert validate(path, folds) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_valid_dataset_passes(tmp_path, capsys):
    assert validate(dataset(tmp_path)) == 0
    assert "6 samples of 6 subjects" in capsys.readouterr().out


def test_truncated_gzip(tmp_path, capsys):
    path = dataset(tmp_path)
    data = (tmp_path / "s1_T1w.nii.gz").read_bytes()
    (tmp_path / "s1_T1w.nii.gz").write_bytes(data[: len(data) // 2])
    assert "sample s1: T1w file" in error_of(path, capsys) and "not a readable NIfTI" in error_of(
        path, capsys
    )


def test_missing_file(tmp_path, capsys):
    path = dataset(tmp_path)
    (tmp_path / "s2_FLAIR.nii.gz").unlink()
    assert "sample s2: FLAIR file" in (err := error_of(path, capsys)) and "does not exist" in err


def test_2d_image(tmp_path, capsys):
    path = dataset(tmp_path)
    nib.save(nib.Nifti1Image(np.random.rand(8, 8).astype(np.float32), np.eye(4)), tmp_path / "s0_T1w.nii.gz")
    assert "shape (8, 8); expected a 3D volume" in error_of(path, capsys)


def test_4d_with_one_volume_is_fine(tmp_path):
    path = dataset(tmp_path)
    nib.save(
        nib.Nifti1Image(np.random.rand(8, 8, 8, 1).astype(np.float32), np.eye(4)), tmp_path / "s0_T1w.nii.gz"
    )
    validate_manifest(read_manifest(path), folds=3)


def test_nan_voxels(tmp_path, capsys):
    path = dataset(tmp_path)
    data = np.random.rand(8, 8, 8).astype(np.float32)
    data[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "s3_T1w.nii.gz")
    assert "sample s3: T1w file" in (err := error_of(path, capsys)) and "1 NaN/infinite voxels" in err


def test_constant_volume(tmp_path, capsys):
    path = dataset(tmp_path)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), tmp_path / "s4_FLAIR.nii.gz")
    assert "is constant (0 everywhere)" in error_of(path, capsys)


def test_unknown_label(tmp_path, capsys):
    path = dataset(tmp_path, rows={0: "s0,subj0,fcd,s0_T1w.nii.gz,s0_FLAIR.nii.gz"})
    err = error_of(path, capsys)
    assert "sample s0: label 'fcd' is not a class index 0..1" in err and "--positive" in err


def test_single_class(tmp_path, capsys):
    path = dataset(tmp_path)
    path.write_text(path.read_text().replace(",1,", ",0,"))
    assert "only class(es) [0] present" in error_of(path, capsys)


def test_duplicate_ids(tmp_path, capsys):
    path = dataset(tmp_path, rows={1: "s0,subj1,1,s1_T1w.nii.gz,s1_FLAIR.nii.gz"})
    assert "sample s0: sample_id appears 2 times" in error_of(path, capsys)


def test_missing_modality_column(tmp_path, capsys):
    path = tmp_path / "manifest.csv"
    path.write_text("sample_id,subject_id,label\ns0,subj0,0\n")
    err = error_of(path, capsys)
    assert "lacks required columns: a modality column" in err


def test_missing_label_column(tmp_path, capsys):
    path = tmp_path / "manifest.csv"
    path.write_text("sample_id,subject_id,T1w\ns0,subj0,a.nii.gz\n")
    assert "lacks required columns: ['label']" in error_of(path, capsys)


def test_empty_modality_cell(tmp_path, capsys):
    path = dataset(tmp_path, rows={5: "s5,subj5,1,s5_T1w.nii.gz,"})
    assert "sample s5: no FLAIR image" in error_of(path, capsys)


def test_too_few_subjects_for_folds(tmp_path, capsys):
    err = error_of(dataset(tmp_path), capsys, folds=5)
    assert "class 0 has 3 subject(s), fewer than the 5 folds requested; use --folds 3" in err


def test_missing_manifest(tmp_path, capsys):
    err = error_of(tmp_path / "nope.csv", capsys)
    assert "nope.csv does not exist" in err and "import-bids" in err


def test_every_problem_is_reported_at_once(tmp_path):
    path = dataset(tmp_path, rows={0: "s0,subj0,7,s0_T1w.nii.gz,s0_FLAIR.nii.gz"})
    (tmp_path / "s2_FLAIR.nii.gz").unlink()
    with gzip.open(tmp_path / "s4_T1w.nii.gz", "wb") as f:
        f.write(b"not a nifti")
    with pytest.raises(DataError) as caught:
        validate_manifest(read_manifest(path), folds=2)
    assert [p.split(":")[0] for p in caught.value.problems] == ["sample s0", "sample s2", "sample s4"]


def test_paths_escaping_the_dataset_root_are_refused_unopened(tmp_path, capsys, monkeypatch):
    outside = write_volume(tmp_path / "outside_T1w.nii.gz", seed=7)  # a valid image, but outside
    root = tmp_path / "dataset"
    root.mkdir()
    path = dataset(root, rows={0: f"s0,subj0,0,../outside_T1w.nii.gz,{outside}"})
    opened = []
    monkeypatch.setattr("fusionsearch.data.validate.check_volume", lambda p: opened.append(p))
    err = error_of(path, capsys)
    assert "sample s0: T1w path" in err and "is outside the dataset root" in err and "--data-root" in err
    assert "FLAIR path" in err  # an absolute path outside the root too
    assert not [p for p in opened if "outside" in str(p)]
    assert main(["data", "validate", str(path), "--folds", "3", "--data-root", str(tmp_path)]) == 0
