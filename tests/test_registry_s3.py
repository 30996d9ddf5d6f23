"""The registry on S3: a real S3-compatible server (moto, server mode) on 127.0.0.1, reached through s3fs."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from moto.server import ThreadedMotoServer

from dode.store.registry import Registry
from dode.store.trajectory import TrajectoryWriter, read_steps

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    """(endpoint URL, boto3 client) of a moto S3 server on a free loopback port, stopped afterwards."""
    saved = {k: os.environ.get(k) for k in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    url = "http://{}:{}".format(*server.get_host_and_port())
    client = boto3.client("s3", endpoint_url=url)
    try:
        yield url, client
    finally:
        server.stop()
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)


@pytest.fixture
def bucket(s3, request):
    name = request.node.name.replace("_", "-")[:50].lower()
    s3[1].create_bucket(Bucket=name)
    return name


def registry(url, bucket, tmp_path, name="cache"):
    return Registry(f"s3://{bucket}/dode", storage_options={"endpoint_url": url}, cache_dir=tmp_path / name)


def test_round_trip_through_s3(s3, bucket, tmp_path):
    url, client = s3
    reg = registry(url, bucket, tmp_path)
    x = np.random.default_rng(0).standard_normal((3, 5, 1, 4, 4)).astype(np.float32)
    with TrajectoryWriter(tmp_path / "t.parquet", (1, 4, 4), {"sigmas": [2.0, 1.0, 0.0]}) as w:
        for i, xi in enumerate(x):
            w.write_step(i, xi)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text('{"a": 1}')
    model = reg.publish("model", "tiny", {"unet": tmp_path / "unet"}, provenance={"model": "fp-tiny"})
    traj = reg.publish("trajectory", "tiny/euler", {"trajectory.parquet": tmp_path / "t.parquet"}, parents=[model],
                       params={"steps": 2})
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"dode/artifacts/{traj.id}/manifest.json" in keys
    assert f"dode/artifacts/{model.id}/files/unet/config.json" in keys

    other = registry(url, bucket, tmp_path, "other-cache")  # a second client sees the same registry
    assert [a.id for a in other.list()] == [model.id, traj.id]
    assert other.find("trajectory", steps=2) == [traj]
    assert [a.id for a in other.lineage(traj.id[:6])] == [traj.id, model.id]
    assert other.get(traj.id[:6]).provenance["model"] == "fp-tiny"
    local = other.local_path(traj.id[:6], "trajectory.parquet")
    assert local.is_relative_to(tmp_path / "other-cache")
    assert torch.equal(read_steps(local).x, torch.from_numpy(x))  # bit-exact through S3
    assert (other.local_dir(model) / "unet" / "config.json").read_text() == '{"a": 1}'
    assert (other.fetch(model, tmp_path / "out") / "unet" / "config.json").read_text() == '{"a": 1}'
    again = other.publish("trajectory", "tiny/euler", {"trajectory.parquet": tmp_path / "t.parquet"},
                          parents=[model], params={"steps": 2})
    assert again.id == traj.id and again.created == traj.created
    assert other.verify() == []


def test_partial_uploads_are_invisible_and_tampering_is_caught(s3, bucket, tmp_path):
    url, client = s3
    reg = registry(url, bucket, tmp_path)
    art = reg.publish("samples", "s", {"x.bin": b"x" * 1000, "y.bin": b"y"})
    client.put_object(Bucket=bucket, Key="dode/artifacts/" + "ab" * 32 + "/files/x.bin", Body=b"orphan")
    assert [a.id for a in reg.list()] == [art.id] and reg.verify() == []
    client.put_object(Bucket=bucket, Key=f"dode/artifacts/{art.id}/files/y.bin", Body=b"z")
    with pytest.raises(ValueError, match="file 'y.bin' of artifact .* fails its sha256 check"):
        reg.fetch(art, tmp_path / "out")
    with pytest.raises(ValueError, match="fails its sha256 check"):
        registry(url, bucket, tmp_path, "fresh").local_path(art, "y.bin")
    assert reg.verify() == [f"artifact {art.short}: file 'y.bin' fails its sha256 check (1 bytes)"]


def test_a_missing_bucket_is_refused_up_front(s3, tmp_path):
    with pytest.raises(ValueError, match="registry s3://no-such-bucket/dode is not writable"):
        registry(s3[0], "no-such-bucket", tmp_path).publish("report", "r", {"a": b"1"})


def test_cli_gets_from_s3_with_the_endpoint_from_the_environment(s3, bucket, tmp_path):
    url, _ = s3
    art = registry(url, bucket, tmp_path).publish_json("report", "s3/report", {"ok": True})
    env = {**os.environ, "AWS_ENDPOINT_URL": url, "DODE_REGISTRY": f"s3://{bucket}/dode",
           "DODE_CACHE": str(tmp_path / "cli-cache")}
    dode = Path(sys.executable).with_name("dode")
    got = subprocess.run([str(dode), "artifacts", "get", art.id[:7], "--out", str(tmp_path / "dl")], env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert got.returncode == 0, got.stderr
    assert got.stdout.startswith(f"{art.id}: 1 file(s) verified")
    assert (tmp_path / "dl" / "data.json").read_text() == '{\n  "ok": true\n}'


def test_s3_without_credentials_is_one_clear_error(s3, bucket, tmp_path):
    url, _ = s3
    art = registry(url, bucket, tmp_path).publish_json("report", "s3/report", {"ok": True})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ENDPOINT_URL=url, AWS_EC2_METADATA_DISABLED="true", HOME=str(tmp_path), DODE_CACHE=str(tmp_path / "c"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    dode = Path(sys.executable).with_name("dode")
    for action in (["list"], ["verify"], ["get", art.id, "--out", str(tmp_path / "dl")], ["gc"]):
        done = subprocess.run([str(dode), "artifacts", *action, "--registry", f"s3://{bucket}/dode"], env=env,
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2, (action, done.stdout, done.stderr)
        assert f"cannot read registry s3://{bucket}/dode" in done.stderr and "credentials" in done.stderr
        assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "dl").exists()


def test_a_file_and_a_folder_of_one_name_on_s3_are_refused_before_anything_is_written(s3, bucket, tmp_path):
    """An object store holds ``files/a`` and ``files/a/b`` at once; no local folder can: refused up front."""
    import hashlib
    import json

    from dode.store.manifest import MANIFEST_VERSION, artifact_id

    url, client = s3
    reg = registry(url, bucket, tmp_path)
    with pytest.raises(ValueError, match="also a folder"):
        reg.publish("report", "clash", {"a": b"1", "a/b": b"2"})
    files = {"a": b"1", "a/b": b"2"}
    hashes = {n: hashlib.sha256(c).hexdigest() for n, c in files.items()}
    id = artifact_id("report", "clash", {}, [], hashes)
    for name, content in files.items():
        client.put_object(Bucket=bucket, Key=f"dode/artifacts/{id}/files/{name}", Body=content)
    manifest = {"manifest_version": MANIFEST_VERSION, "id": id, "kind": "report", "key": "clash", "params": {},
                "parents": [], "provenance": {}, "created": "2024-01-01T00:00:00+00:00",
                "files": {n: {"sha256": hashes[n], "size": len(c)} for n, c in files.items()}}
    client.put_object(Bucket=bucket, Key=f"dode/artifacts/{id}/manifest.json", Body=json.dumps(manifest).encode())
    with pytest.raises(ValueError, match="also a folder of other files"):
        reg.fetch(id, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert any("also a folder" in p for p in reg.verify())
