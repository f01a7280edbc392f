"""The bundled S3 server (devstack/seaweed.py) grows with the disk instead of stopping at a fixed
number of volumes.

Volumes of 1 MB instead of 64 MB make the old ceiling (16 volumes: about 590 MB of photos with
64 MB ones) a matter of 16 MB, reached in seconds.
"""

import io
import os

import pytest
import urllib3
from minio import Minio
from minio.error import S3Error

from devstack.net import free_port_block
from devstack.seaweed import SeaweedS3

OBJECT_BYTES = 512 * 1024
OLD_VOLUME_MAX = 16  # what devstack/seaweed.py started the server with before


def _server(tmp_path, **kwargs) -> SeaweedS3:
    base = free_port_block(4)
    return SeaweedS3(
        data_dir=tmp_path / "s3",
        access_key="growth-test",
        secret_key="growth-test-secret",
        s3_port=base + 3,
        base_port=base,
        volume_size_limit_mb=1,
        **kwargs,
    ).start()


def _fill(server: SeaweedS3, megabytes: int) -> int:
    """Write ``megabytes`` MB of random objects; how many MB were accepted before the first refusal."""
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=60))
    client = Minio(
        server.endpoint, access_key=server.access_key, secret_key=server.secret_key, secure=False, region="us-east-1", http_client=http
    )
    client.make_bucket("growth")
    data = os.urandom(OBJECT_BYTES)
    per_mb = (1024 * 1024) // OBJECT_BYTES
    for number in range(megabytes * per_mb):
        try:
            client.put_object("growth", f"photo-{number}", io.BytesIO(data), len(data))
        except S3Error:
            return number // per_mb
    return megabytes


def test_the_store_takes_writes_past_the_old_ceiling(tmp_path):
    """With the volume count left to SeaweedFS (the free disk), 40 MB go into 1 MB volumes: more
    than 16 such volumes, the old fixed count, could hold."""
    server = _server(tmp_path)
    try:
        assert "-volume.max=0" in server.command()
        assert _fill(server, 40) == 40
    finally:
        server.stop()


def test_the_old_fixed_volume_count_refused_writes_once_its_volumes_were_full(tmp_path):
    """The failure the test above guards against, shown on the old setting: 16 volumes of 1 MB
    refuse writes at about 16 MB (so the test above would fail on it)."""
    server = _server(tmp_path, volume_max=OLD_VOLUME_MAX)
    try:
        accepted = _fill(server, 40)
    finally:
        server.stop()
    assert accepted < 40
    assert accepted == pytest.approx(OLD_VOLUME_MAX, abs=2)
