"""The S3 endpoint unreachable mid-search: retried, then a clear one-paragraph error (moto server)."""

import io
import subprocess
import sys
import time
from types import SimpleNamespace

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from conftest import moto_server, own_ray_env, tiny_search, wait_for
from fusionsearch.data.synth import SynthConfig, generate
from fusionsearch.tune import callbacks
from proxy import OutageProxy

BUCKET = "outage"
CLI = [sys.executable, "-m", "fusionsearch.cli"]


@pytest.fixture
def s3_behind_a_proxy(tmp_path):
    """A moto S3 server with one bucket, reached through a proxy that can cut it off."""
    with moto_server() as port:
        direct = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            allow_bucket_creation=True,
            access_key="test",
            secret_key="test",
            region="us-east-1",
        )
        direct.create_dir(BUCKET)
        proxy = OutageProxy(port)
        env = own_ray_env(  # the trial workers must reach the S3 endpoint too
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{proxy.port}",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            AWS_DEFAULT_REGION="us-east-1",
            FUSIONSEARCH_MIRROR=str(tmp_path / "mirror"),
        )
        try:
            yield direct, proxy, env
        finally:
            proxy.close()


def test_a_trial_failing_on_an_unreachable_storage_is_retried_once_a_full_one_stops_at_once(
    tmp_path, monkeypatch
):
    """StorageGuard's decisions, on trials as Tune hands them to callbacks (no Ray needed)."""
    stops = []
    monkeypatch.setattr(callbacks.signal, "getsignal", lambda signum: stops.append)
    monkeypatch.setattr(callbacks.signal, "raise_signal", stops.append)
    monkeypatch.setattr(callbacks, "storage_failure", {})

    def trial(error: str, failed: int) -> SimpleNamespace:
        (tmp_path / "error.txt").write_text(f"Traceback ...\n{error}\n")
        return SimpleNamespace(trial_id="t1", error_file=str(tmp_path / "error.txt"),
                               run_metadata=SimpleNamespace(num_failures=failed))  # fmt: skip

    guard = callbacks.StorageGuard()
    unreachable = "OSError: When reading 'runs/x': AWS Error NETWORK_CONNECTION during HeadObject"
    guard.on_trial_recover(0, [], trial(unreachable, 1))  # a short outage: retried
    guard.on_trial_recover(0, [], trial("RuntimeError: CUDA error", 2))  # not the storage: Tune's business
    assert stops == [] and callbacks.storage_failure == {}
    guard.on_trial_recover(0, [], trial(unreachable, 2))  # failed on it twice: stop, as Ctrl-C does
    assert len(stops) == 1 and callbacks.storage_failure["kind"] == "unreachable"
    callbacks.storage_failure.clear()
    guard.on_trial_error(0, [], trial(unreachable, 1))  # out of retries: stop, the trial stays pending
    assert len(stops) == 2
    callbacks.storage_failure.clear()
    guard.on_trial_recover(0, [], trial("OSError: [Errno 28] No space left on device", 1))  # full: at once
    assert len(stops) == 3 and callbacks.storage_failure["kind"] == "full"
    guard.on_trial_recover(0, [], trial(unreachable, 5))  # the search is already stopping: once is enough
    assert len(stops) == 3


@pytest.mark.slow
def test_an_unreachable_endpoint_stops_the_search_with_a_clear_error_and_resume_finishes_it(
    s3_behind_a_proxy, tmp_path
):
    direct, proxy, env = s3_behind_a_proxy
    manifest = generate(tmp_path / "data", SynthConfig(n=24, size=16, seed=1))
    storage = f"s3://{BUCKET}/runs"
    # No retry (the retry of a short outage is the test above): the first trial failing on the
    # unreachable storage stops the search, as its second failure would with --max-failures 1.
    # Two candidates, the baseline and one child: the endpoint goes away as the child starts.
    argv = tiny_search(manifest, storage, "out", tmp_path / "cache", "--checkpoint-interval", "0",
                       "--max-failures", "0", "--searcher", "random", "--budget", "2")  # fmt: skip
    run = subprocess.Popen([*CLI, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    table = f"{BUCKET}/runs/out/candidates.parquet"
    wait_for(lambda: direct.get_file_info(table).is_file or run.poll() is not None, what="round 0")
    assert run.poll() is None, run.communicate()[1][-3000:]
    proxy.cut()  # the endpoint goes away mid-search, for longer than retries can bridge
    cut_at = time.monotonic()
    _, err = run.communicate(timeout=600)
    stopped_after = time.monotonic() - cut_at
    assert run.returncode == 2, err[-3000:]
    # (When the driver's own reads fail first, the stop comes from there: the same one-paragraph error.)
    assert f"the storage of {storage}/out could not be reached, also on retries" in err
    assert f"continue with 'fusionsearch resume out --storage s3://{BUCKET}/runs'" in err
    print(f"outage: the search stopped {stopped_after:.0f} s after the endpoint went away")

    proxy.restore()  # the endpoint is back: resume finishes the search
    started = time.monotonic()
    resume = subprocess.run([*CLI, "resume", "out", "--storage", storage], env=env, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert resume.returncode == 0, resume.stderr[-3000:]
    rows = _rows(direct)
    assert rows and all(r["status"] == "ok" for r in rows) and sum(r["chosen"] for r in rows) == 1
    assert "chosen mask:" in resume.stdout
    print(f"outage: resume finished the search in {time.monotonic() - started:.0f} s")


def _rows(fs) -> list[dict]:
    """The candidates table, read straight from the server (not through the proxy)."""
    with fs.open_input_stream(f"{BUCKET}/runs/out/candidates.parquet") as f:
        return pq.read_table(io.BytesIO(f.read())).to_pylist()
