"""A search whose storage and preprocessing cache are an S3 bucket (moto's S3 server on 127.0.0.1)."""

import os
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import ray

from conftest import TINY_RUN, moto_server, plain_tune_search
from fusionsearch.cli import main
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.report.final import read_final
from fusionsearch.tune.driver import load_result
from searchers import SFSASearcher

BUCKET = "fusionsearch-test"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """An S3-compatible server with one bucket; AWS_* variables point pyarrow (and Ray) at it."""
    with moto_server() as port, pytest.MonkeyPatch.context() as patch:
        for key, value in {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FUSIONSEARCH_MIRROR": str(tmp_path_factory.mktemp("mirror")),
        }.items():
            patch.setenv(key, value)
        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}", scheme="http", allow_bucket_creation=True
        )
        fs.create_dir(BUCKET)
        # Ray's workers inherit the variables: started after they are set.
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        yield fs
        ray.shutdown()


def test_search_with_s3_storage_keeps_everything_in_the_bucket(s3, tmp_path):
    data = tmp_path / "data"
    manifest = generate(data, SynthConfig(n=24, size=16, seed=1))
    storage = f"s3://{BUCKET}/runs"
    assert main(["run", "--data", str(manifest), "--storage", storage, "--name", "s3run", *TINY_RUN]) == 0

    objects = [i.path for i in s3.get_file_info(pafs.FileSelector(BUCKET, recursive=True)) if i.is_file]
    experiment = f"{BUCKET}/runs/s3run/"
    assert f"{experiment}candidates.parquet" in objects and f"{experiment}fusionsearch-run.json" in objects
    result = load_result(f"{storage}/s3run")
    rows = result.table.to_pylist()
    assert result.best_mask is not None and all(r["status"] == "ok" for r in rows)
    for row in rows:  # every candidate's final weights are objects in the bucket, where children read them
        assert row["checkpoint"].startswith(f"s3://{experiment}")
        assert f"{row['checkpoint'].removeprefix('s3://')}/model.pt" in objects
    assert any(r["parent_mask"] for r in rows)  # at least one child warm-started from an s3:// parent
    # The preprocessing cache (24 entries and the index) is in the bucket too ...
    cache = [p for p in objects if p.startswith(f"{BUCKET}/runs/.fusionsearch-cache/")]
    assert sum(p.endswith(".npy") for p in cache) == 24 and any("/index/" in p for p in cache)
    # ... and nothing was written beside the data on the driver's disk.
    assert sorted(p.name for p in data.iterdir()) == ["images", "manifest.csv", "synth.json", "truth.csv"]
    # Trials and the evaluation memory-mapped node-local copies of the entries they read.
    assert len(list(Path(os.environ["FUSIONSEARCH_MIRROR"]).rglob("*.npy"))) == 24
    # The held-out predictions and the report went to the bucket as well.
    assert f"{experiment}predictions.parquet" in objects and f"{experiment}report/report.html" in objects
    # So does the final model, stage by stage, and predict reads it from there.
    assert main(["final", "s3run", "--storage", storage, "--device", "cpu"]) == 0
    objects = [i.path for i in s3.get_file_info(pafs.FileSelector(BUCKET, recursive=True)) if i.is_file]
    final = read_final(f"{storage}/s3run")
    assert f"{experiment}final/final.json" in objects and final.checkpoint.startswith(
        f"s3://{experiment}final/"
    )
    assert f"{final.checkpoint.removeprefix('s3://')}/model.pt" in objects
    out = tmp_path / "predictions.csv"
    assert main(["predict", "s3run", "--storage", storage, "--data", str(manifest), "--out", str(out)]) == 0
    assert "final_probability_1" in out.read_text().splitlines()[0]


def test_searcher_in_a_plain_tuner_on_s3_hands_children_their_parents_checkpoint(s3):
    searcher = SFSASearcher()
    states = plain_tune_search(
        searcher, f"s3://{BUCKET}/plain", "sfsa", callbacks=[searcher.checkpoint_locator()]
    )
    assert len(states) == 13 and states["search", "0000"] == (None, None)  # with 3 rounds' controls
    assert all(seen == parent for seen, parent in states.values())  # each child read its s3:// parent
    assert all(
        str(r["checkpoint"]).startswith(f"s3://{BUCKET}/plain/sfsa/") for r in searcher.table().to_pylist()
    )
