"""Run folders in object storage, against a local S3 endpoint (moto): mirrors, push/pull, node caches,
data and metrics read and written through URIs."""
import json
import shutil

import pyarrow.fs as pafs
import pytest

from rlhf_ray import data, manifest, storage
from rlhf_ray.core.schema import BadRecord
from rlhf_ray.train.runner import MetricsLog


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_RAY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def remote_files(uri: str) -> dict[str, bytes]:
    fs, base = pafs.FileSystem.from_uri(uri)
    out = {}
    for info in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                out[info.path[len(base) + 1:]] = f.read()
    return out


def test_a_mirror_pushes_what_changed_and_a_fresh_mirror_gets_it_back(s3_bucket, cache):
    run = f"{s3_bucket}/run"
    root = storage.mirror(run)
    (root / "sft" / "model").mkdir(parents=True)
    (root / "sft" / "model" / "w.bin").write_bytes(b"\0" * 1000)
    (root / "sft" / "manifest.json").write_text('{"a": 1}')
    (root / "sft" / "ray_train").mkdir()
    (root / "sft" / "ray_train" / "ckpt.pt").write_bytes(b"c")
    assert storage.push(root / "sft") == 3
    assert storage.push(root / "sft") == 0  # nothing changed since
    (root / "sft" / "manifest.json").write_text('{"a": 2}')  # same size, new content
    assert storage.push(root) == 1
    assert remote_files(run) == {"sft/model/w.bin": b"\0" * 1000, "sft/manifest.json": b'{"a": 2}',
                                 "sft/ray_train/ckpt.pt": b"c"}
    assert storage.uri(root / "sft" / "model") == f"{run}/sft/model"

    shutil.rmtree(root)  # another node: an empty mirror
    root = storage.mirror(run)
    assert (root / "sft" / "manifest.json").read_text() == '{"a": 2}'
    assert not (root / "sft" / "ray_train").exists(), "Ray Train's checkpoints stay in storage"
    assert storage.pull(root) == 0

    storage.remove(root / "sft" / "manifest.json")
    assert set(remote_files(run)) == {"sft/model/w.bin", "sft/ray_train/ckpt.pt"}


def test_pull_brings_files_written_elsewhere(s3_bucket, cache):
    root = storage.mirror(f"{s3_bucket}/run")
    storage.write_text(f"{s3_bucket}/run/sft/metrics.jsonl", '{"step": 1}\n')  # e.g. by a worker on another node
    assert storage.pull(root / "sft") == 1
    assert (root / "sft" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_local_downloads_once_and_again_when_storage_changes(s3_bucket, cache):
    model = f"{s3_bucket}/models/m"
    storage.write_text(f"{model}/config.json", "{}")
    first = storage.local(model)
    assert json.loads(open(f"{first}/config.json").read()) == {}
    stamp = (cache / "fetched").rglob(".listing.json").__next__().stat().st_mtime_ns
    assert storage.local(model) == first
    assert next((cache / "fetched").rglob(".listing.json")).stat().st_mtime_ns == stamp  # not fetched again
    storage.write_text(f"{model}/extra.txt", "x")
    assert open(f"{storage.local(model)}/extra.txt").read() == "x"
    with pytest.raises(FileNotFoundError, match="not found in storage: s3://.*/nothing"):
        storage.local(f"{s3_bucket}/nothing")


def test_a_uri_in_this_nodes_mirror_is_read_from_the_mirror(s3_bucket, cache):
    root = storage.mirror(f"{s3_bucket}/run")
    (root / "sft" / "model").mkdir(parents=True)
    (root / "sft" / "model" / "w.bin").write_bytes(b"1")
    name = storage.publish(root / "sft" / "model")
    assert name == f"{s3_bucket}/run/sft/model"
    assert storage.local(name) == str(root / "sft" / "model")
    storage.write_text(f"{name}/w.bin", "22")  # storage moved on: the mirror is stale, so download
    assert storage.local(name) != str(root / "sft" / "model")


def test_plain_local_paths_pass_through(tmp_path, cache):
    assert storage.publish(tmp_path) == str(tmp_path) and storage.uri(tmp_path) is None
    assert storage.local(str(tmp_path)) == str(tmp_path)
    assert storage.push(tmp_path) == 0 and storage.pull(tmp_path) == 0


def test_bad_rows_in_storage_are_named_by_their_uri(s3_bucket, cache):
    path = f"{s3_bucket}/data/sft.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    storage.write_text(path, good + "\n{not json\n")
    assert data.expand_paths([path]) == [path]
    with pytest.raises(BadRecord) as e:
        list(data.read_records([path], "sft"))
    assert (e.value.file, e.value.line) == (path, 2)
    with pytest.raises(FileNotFoundError, match="input not found: s3://.*/missing.jsonl"):
        data.expand_paths([f"{s3_bucket}/data/missing.jsonl"])


def test_fingerprints_of_mirror_paths_match_across_mirrors(s3_bucket, cache):
    root = storage.mirror(f"{s3_bucket}/run")
    (root / "data").mkdir()
    (root / "data" / "p.jsonl").write_text("{}\n")
    storage.push(root)
    first = manifest.fingerprint([root / "data" / "p.jsonl"])
    assert list(first) == [f"{s3_bucket}/run/data/p.jsonl"]
    shutil.rmtree(root)
    again = storage.mirror(f"{s3_bucket}/run")
    assert manifest.fingerprint([again / "data" / "p.jsonl"]) == first
    assert manifest.fingerprint([f"{s3_bucket}/run/data/p.jsonl"]) == first


def test_metrics_log_in_storage_appends_after_a_resume(s3_bucket):
    path = f"{s3_bucket}/run/sft/metrics.jsonl"
    log = MetricsLog(path, 0)
    for step in (1, 2, 3):
        log.write({"step": step})
    resumed = MetricsLog(path, 2)  # restarted from the step-2 checkpoint: step 3 runs again
    resumed.write({"step": 3, "again": True})
    lines = [json.loads(x) for x in storage.read_text(path).splitlines()]
    assert lines == [{"step": 1}, {"step": 2}, {"step": 3}, {"step": 3, "again": True}]
    assert MetricsLog(path, 0).lines == []  # a fresh run starts a fresh log


def test_an_unreachable_run_folder_is_a_clear_error(s3_server, cache):
    with pytest.raises(ValueError, match="run_dir s3://no-such-bucket/run: storage not reachable"):
        storage.mirror("s3://no-such-bucket/run")


def test_serve_picks_the_latest_policy_of_a_local_or_stored_run(tmp_path, s3_bucket, cache):
    from rlhf_ray import config_load
    from rlhf_ray.config import PipelineConfig
    from rlhf_ray.serve.app import resolve_models

    local = config_load.load(PipelineConfig, None, [f"run_dir={tmp_path}"])
    assert resolve_models(local) == (f"{tmp_path}/sft/model", f"{tmp_path}/rm/model")
    rs = tmp_path / "rs" / "round1" / "top" / "sft" / "model"
    rs.mkdir(parents=True)
    assert resolve_models(local)[0] == str(rs)

    run = f"{s3_bucket}/run"
    stored = config_load.load(PipelineConfig, None, [f"run_dir={run}"])
    assert resolve_models(stored) == (f"{run}/sft/model", f"{run}/rm/model")
    storage.write_text(f"{run}/rs/round1/top/sft/model/config.json", "{}")
    assert resolve_models(stored)[0] == f"{run}/rs/round1/top/sft/model"


def test_the_test_endpoint_assembles_a_slow_upload_once_for_concurrent_retries(s3_bucket, s3_server, monkeypatch):
    """The endpoint the cluster test relies on (tests/conftest.py): a client retrying a slow complete
    gets the one object, not a race inside moto."""
    import threading
    import time

    import boto3
    from moto.s3 import models

    assembled = []
    complete = models.S3Backend.complete_multipart_upload

    def slow(self, *args, **kwargs):
        assembled.append(1)
        time.sleep(2)  # past the endpoint's 1 s: the answer is whitespace, then the XML
        return complete(self, *args, **kwargs)

    monkeypatch.setattr(models.S3Backend, "complete_multipart_upload", slow)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    bucket = s3_bucket.removeprefix("s3://")
    upload = s3.create_multipart_upload(Bucket=bucket, Key="k")["UploadId"]
    parts = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=bucket, Key="k", UploadId=upload, PartNumber=n,
                                                      Body=bytes([n]) * (5 << 20))["ETag"]} for n in (1, 2)]
    etags = []

    def finish():
        etags.append(s3.complete_multipart_upload(Bucket=bucket, Key="k", UploadId=upload,
                                                  MultipartUpload={"Parts": parts})["ETag"])

    threads = [threading.Thread(target=finish) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(assembled) == 1 and len(etags) == 3 and len(set(etags)) == 1
    body = s3.get_object(Bucket=bucket, Key="k")["Body"].read()
    assert body == b"\1" * (5 << 20) + b"\2" * (5 << 20)


def test_export_refuses_a_final_checkpoint_without_weights(s3_bucket, tmp_path):
    from types import SimpleNamespace

    from ray.train import Checkpoint

    from rlhf_ray.train.runner import STATE_FILE, export_checkpoint

    fs, base = pafs.FileSystem.from_uri(f"{s3_bucket}/ckpt")
    fs.create_dir(base)
    for name in ("config.json", STATE_FILE):
        with fs.open_output_stream(f"{base}/{name}") as f:
            f.write(b"{}")
    result = SimpleNamespace(checkpoint=Checkpoint(base, filesystem=fs))
    with pytest.raises(RuntimeError, match=r"holds no \*\.safetensors: its upload to s3 storage did not complete"):
        export_checkpoint(result, tmp_path)
    assert not (tmp_path / "model").exists()
    with fs.open_output_stream(f"{base}/model.safetensors") as f:
        f.write(b"w")
    assert sorted(p.name for p in export_checkpoint(result, tmp_path).iterdir()) == ["config.json", "model.safetensors"]


def test_a_training_stage_keeps_its_checkpoints_in_storage_only_for_the_same_config(s3_bucket, cache):
    run = f"{s3_bucket}/run"
    root = storage.mirror(run)
    ckpt = f"{run}/sft/ray_train/sft/checkpoint_1/state.pt"
    storage.write_text(ckpt, "step 8")  # an interrupted attempt whose start predates the record
    st = manifest.Stage("sft", root / "sft", {"sft": {"epochs": 1}}, {"data.jsonl": "ab"})
    st.begin()
    assert not storage.exists(ckpt), "checkpoints of an unrecorded attempt are not resumed"
    storage.write_text(ckpt, "step 8")
    shutil.rmtree(root)  # the same stage started again, on another node
    root = storage.mirror(run)
    manifest.Stage("sft", root / "sft", {"sft": {"epochs": 1}}, {"data.jsonl": "ab"}).begin()
    assert storage.read_text(ckpt) == "step 8", "the same config and inputs resume"
    manifest.Stage("sft", root / "sft", {"sft": {"epochs": 2}}, {"data.jsonl": "ab"}).begin()
    assert not storage.exists(ckpt), "another config's checkpoints are not this one's"
    storage.write_text(ckpt, "step 8")
    manifest.Stage("sft", root / "sft", {"sft": {"epochs": 2}}, {"data.jsonl": "cd"}).begin()
    assert not storage.exists(ckpt), "nor are other inputs'"
