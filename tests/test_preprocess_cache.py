import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import fusionsearch.data.cache
from fusionsearch.data.cache import PreprocessCache
from fusionsearch.data.manifest import read_manifest
from fusionsearch.data.preprocess import preprocess_sample
from fusionsearch.errors import DataError
from fusionsearch.settings import PreprocessConfig
from trees import write_volume

SETTINGS = PreprocessConfig(shape=16, crop_foreground=False)


def blob_volume(path, shape, zoom, origin, centre_mm):
    """Noise plus a bright cube around the world point ``centre_mm``."""
    data = np.random.default_rng(0).random(shape).astype(np.float32) * 0.1 + 0.1
    index = np.round((np.asarray(centre_mm) - origin) / zoom).astype(int)
    data[tuple(slice(i - 1, i + 2) for i in index)] = 5.0
    affine = np.diag([zoom, zoom, zoom, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_modalities_on_different_grids_are_resampled_into_register(tmp_path):
    centre = (2.0, -4.0, 6.0)
    t1 = blob_volume(tmp_path / "t1.nii.gz", (16, 16, 16), 1.0, np.array([-8.0] * 3), centre)
    flair = blob_volume(tmp_path / "flair.nii.gz", (10, 10, 10), 2.0, np.array([-10.0] * 3), centre)
    image = preprocess_sample({"T1w": t1, "FLAIR": flair}, SETTINGS)
    assert image.shape == (2, 16, 16, 16) and image.dtype == np.float16
    peaks = [np.unravel_index(np.argmax(channel), channel.shape) for channel in image.astype(np.float32)]
    assert np.abs(np.subtract(*peaks)).max() <= 1, peaks
    # Normalised per channel inside the foreground.
    assert np.allclose(image.astype(np.float32).reshape(2, -1).mean(1), 0, atol=1e-2)


def test_spacing_and_shape(tmp_path):
    t1 = write_volume(tmp_path / "t1.nii.gz", shape=(20, 20, 20), zoom=1.0)
    flair = write_volume(tmp_path / "flair.nii.gz", shape=(10, 10, 10), zoom=2.0)
    image = preprocess_sample({"T1w": t1, "FLAIR": flair}, PreprocessConfig(shape=(12, 8, 16), spacing=2.0))
    assert image.shape == (2, 12, 8, 16)


def small_dataset(tmp_path, n=4):
    lines = []
    for i in range(n):
        write_volume(tmp_path / f"s{i}_T1w.nii.gz", seed=i)
        write_volume(tmp_path / f"s{i}_FLAIR.nii.gz", shape=(10, 10, 10), zoom=1.3, seed=50 + i)
        lines.append(f"s{i},subj{i},{i % 2},s{i}_T1w.nii.gz,s{i}_FLAIR.nii.gz")
    path = tmp_path / "manifest.csv"
    path.write_text("sample_id,subject_id,label,T1w,FLAIR\n" + "\n".join(lines) + "\n")
    return read_manifest(path)


def test_second_build_does_no_preprocessing(tmp_path, monkeypatch):
    manifest = small_dataset(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", SETTINGS)
    assert cache.build(manifest, workers=1).built == 4

    def fail(*args, **kwargs):
        raise AssertionError("preprocessed again")

    monkeypatch.setattr(fusionsearch.data.cache, "preprocess_sample", fail)
    stats = PreprocessCache(tmp_path / "cache", SETTINGS).build(manifest, workers=1)
    assert (stats.built, stats.reused) == (0, 4)


def test_changed_setting_or_file_rebuilds_only_what_changed(tmp_path):
    manifest = small_dataset(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", SETTINGS)
    cache.build(manifest, workers=1)
    before = cache.open(manifest)[2][0].clone()
    write_volume(tmp_path / "s2_T1w.nii.gz", seed=999)  # new contents for one sample
    stats = cache.build(manifest, workers=1)
    assert (stats.built, stats.reused) == (1, 3)
    assert not torch.equal(cache.open(manifest)[2][0], before)
    other = PreprocessCache(tmp_path / "cache", PreprocessConfig(shape=12, crop_foreground=False))
    assert other.build(manifest, workers=1).built == 4
    assert other.open(manifest)[0][0].shape == (2, 12, 12, 12)
    assert cache.build(manifest, workers=1).built == 0  # both settings coexist


def test_parallel_build_matches_serial(tmp_path):
    manifest = small_dataset(tmp_path)
    parallel = PreprocessCache(tmp_path / "parallel", SETTINGS)
    assert parallel.build(manifest, workers=2).built == 4
    dataset = parallel.open(manifest)
    for row in range(len(manifest)):
        expected = preprocess_sample(manifest.paths(row), SETTINGS).astype(np.float32)
        np.testing.assert_array_equal(dataset[row][0].numpy(), expected)


def test_two_processes_building_at_once_give_one_correct_cache(tmp_path):
    manifest = small_dataset(tmp_path, n=6)
    command = [sys.executable, "-m", "fusionsearch.cli", "data", "cache", str(tmp_path / "manifest.csv"),
               "--cache", str(tmp_path / "cache"), "--size", "16", "--workers", "1"]  # fmt: skip
    processes = [subprocess.Popen(command, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=120) == 0, process.stderr.read()
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(files) == 12 and not any(
        f.startswith(".") for f in files
    )  # 6 entries, 6 records, no leftovers
    assert (
        PreprocessCache(tmp_path / "cache", PreprocessConfig(shape=16)).build(manifest, verify=True).built
        == 0
    )
    config = PreprocessConfig(shape=16)
    dataset = PreprocessCache(tmp_path / "cache", config).open(manifest)
    for row in range(len(manifest)):
        expected = preprocess_sample(manifest.paths(row), config).astype(np.float32)
        np.testing.assert_array_equal(dataset[row][0].numpy(), expected)


def test_cached_dataset_feeds_a_dataloader(tmp_path):
    manifest = small_dataset(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", SETTINGS)
    cache.build(manifest, workers=1)
    images, labels = next(iter(torch.utils.data.DataLoader(cache.open(manifest), batch_size=4)))
    assert images.shape == (4, 2, 16, 16, 16) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 0, 1]


def test_open_without_build_is_clear(tmp_path):
    manifest = small_dataset(tmp_path)
    with pytest.raises(DataError, match="has 4 missing or damaged entr"):
        PreprocessCache(tmp_path / "cache", SETTINGS).open(manifest)


def test_a_truncated_entry_is_refused_by_trials_and_rebuilt_by_the_next_build(tmp_path, caplog):
    manifest = small_dataset(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", SETTINGS)
    cache.build(manifest, workers=1)
    entry = Path(cache.entry(cache.keys(manifest)[2]))
    intact = entry.read_bytes()
    entry.write_bytes(intact[: len(intact) // 2])  # a full disk, an interrupted copy
    sample = manifest.sample_ids[2]
    with pytest.raises(
        DataError, match=f"sample {sample}, {len(intact) // 2} bytes instead of {len(intact)}"
    ):
        cache.open(manifest)  # a trial: a message naming the sample, not numpy's mmap error
    stats = cache.build(manifest, workers=1)  # the length is always checked
    assert (stats.built, stats.repaired, stats.reused) == (1, 1, 3) and entry.read_bytes() == intact
    assert f"cache entry of sample {sample} is damaged" in caplog.text
    cache.open(manifest)


def test_an_entry_overwritten_at_its_length_is_found_by_verification_only(tmp_path):
    manifest = small_dataset(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", SETTINGS)
    cache.build(manifest, workers=1)
    entry = Path(cache.entry(cache.keys(manifest)[1]))
    intact = entry.read_bytes()
    mid = len(intact) // 2
    flipped = bytes(b ^ 0xFF for b in intact[mid : mid + 64])
    entry.write_bytes(intact[:mid] + flipped + intact[mid + 64 :])  # other values, the right size: a bad sync
    assert cache.build(manifest, workers=1).built == 0  # the cheap check cannot see it ...
    stats = cache.build(manifest, workers=1, verify=True)  # ... the hashes can
    assert (stats.built, stats.repaired) == (1, 1) and entry.read_bytes() == intact
    assert stats.verified_bytes > 0 and stats.verify_seconds >= 0


def test_an_entry_without_its_record_is_unfinished_and_rebuilt(tmp_path):
    manifest = small_dataset(tmp_path)
    cache = PreprocessCache(tmp_path / "cache", SETTINGS)
    cache.build(manifest, workers=1)
    key = cache.keys(manifest)[0]
    Path(cache.record(key)).unlink()  # a builder killed between the array and its record
    assert cache.damage(key) == "unfinished (no record)"
    assert cache.build(manifest, workers=1).repaired == 1 and cache.damage(key) is None


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_the_cluster_builds_the_same_cache_bytes_as_the_driver(tmp_path, session_ray):
    manifest = small_dataset(tmp_path, n=6)
    # The CLI's --address: a worker per CPU of the running Ray (the session's) builds every entry.
    command = [sys.executable, "-m", "fusionsearch.cli", "data", "cache", str(tmp_path / "manifest.csv"),
               "--cache", str(tmp_path / "cluster"), "--size", "16", "--address", session_ray,
               "--workers", "2"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "built 6 (repaired 0), reused 0" in done.stdout
    PreprocessCache(tmp_path / "driver", PreprocessConfig(shape=16)).build(manifest, workers=2)
    cluster, driver = _files(tmp_path / "cluster"), _files(tmp_path / "driver")
    assert len(driver) == 12 and cluster == driver  # 6 entries and 6 records, byte for byte


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_a_cluster_build_names_the_node_that_cannot_see_the_cache_and_a_failed_sample(tmp_path):
    from fusionsearch.errors import UserError
    from fusionsearch.tune.cluster_cache import cache_map, cluster_map

    manifest = small_dataset(tmp_path, n=2)
    assert cache_map("auto", manifest, str(tmp_path / "cache")) is None  # one node: the driver's threads
    built = cache_map("cluster", manifest, str(tmp_path / "cache"), workers=3)
    assert built.func is cluster_map and built.keywords == {"workers": 3}
    (tmp_path / "a-file").write_text("")
    with pytest.raises(
        UserError, match=r"--cache-build cluster: not every node sees .*node [0-9.]+: --cache"
    ):
        cache_map("cluster", manifest, str(tmp_path / "a-file" / "cache"))

    def fails_on_s9(sample: str) -> None:  # a local function: Ray ships it by value
        if sample == "s9":
            raise DataError(f"sample {sample}: preprocessing failed (a test)")

    # A job's error comes back as itself, not wrapped by Ray.
    with pytest.raises(DataError, match=r"^sample s9: preprocessing failed \(a test\)$"):
        list(cluster_map(fails_on_s9, ["s1", "s9", "s2"], workers=1))
