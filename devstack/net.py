"""Small network helpers shared by the local runner, the tests and the benchmarks (no Django)."""

import os
import socket
import uuid
from urllib.parse import urlsplit

DEFAULT_PORTS = {"postgres": 5432, "postgresql": 5432, "amqp": 5672, "redis": 6379}


def answers(url_or_hostport: str, timeout: float = 1.0) -> bool:
    """True when a TCP connection to the URL's host and port succeeds."""
    if "://" in url_or_hostport:
        parts = urlsplit(url_or_hostport)
        host, port = parts.hostname, parts.port or DEFAULT_PORTS.get(parts.scheme)
    else:
        host, _, port_text = url_or_hostport.rpartition(":")
        port = int(port_text)
    if not host or not port:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(count: int = 4, *, start: int = 21000, stop: int = 29000) -> int:
    """A base port such that base .. base+count-1 and their gRPC twins (+10000) are all free."""
    for _ in range(200):
        base = start + (int.from_bytes(os.urandom(2), "big") % ((stop - start) // 10)) * 10
        ports = [base + i for i in range(count)]
        if all(port_free(p) and port_free(p + 10000) for p in ports):
            return base
    raise RuntimeError("no free block of ports for the S3 server")


def isolated_env(prefix: str) -> dict[str, str]:
    """Variables that give one run (a test session, a soak) its own S3 server ports, bucket and
    queues, so it never touches a running `make up` or another run. S3's four ports start at
    FDA_S3_BASE_PORT; the server listens for S3 on the fourth."""
    run = uuid.uuid4().hex[:8]
    base = free_port_block(4)
    return {
        "FDA_RUN": run,
        "FDA_S3_BASE_PORT": str(base),
        "S3_ENDPOINT": f"127.0.0.1:{base + 3}",
        "S3_BUCKET": f"{prefix}-{run}",
        "S3_PUBLIC_ENDPOINT": "",
        "CELERY_QUEUE_DETECT": f"{prefix}-{run}-detect",
        "CELERY_QUEUE_DELIVER": f"{prefix}-{run}-deliver",
        "CELERY_QUEUE_DEAD": f"{prefix}-{run}-dead",
        "CELERY_QUEUE_DETECT_BATCH": f"{prefix}-{run}-detect-batch",
    }
