"""The local runner: its choice between real services and embedded stand-ins, and its pid file
(one stack per var dir: a second `make up` refuses and leaves the first one's state alone)."""

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from devstack.net import answers
from devstack.runner import (
    ROOT,
    AlreadyRunning,
    embedded_fallbacks,
    pid_alive,
    pidfile_claim,
    pidfile_release,
    read_pid,
    var_dir,
)


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_services_that_do_not_answer_are_replaced_by_embedded_ones(tmp_path):
    port = _dead_port()
    overrides = embedded_fallbacks(
        {
            "FDA_VAR_DIR": str(tmp_path),
            "DATABASE_URL": f"postgres://u@127.0.0.1:{port}/db",
            "CELERY_BROKER_URL": f"amqp://g:g@127.0.0.1:{port}//",
            "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{port}/0",
            "CACHE_URL": f"redis://127.0.0.1:{port}/1",
        }
    )
    assert overrides["CACHE_URL"] == "locmemcache://"
    assert overrides["DATABASE_URL"] == f"sqlite:///{tmp_path / 'db.sqlite3'}"
    assert overrides["CELERY_BROKER_URL"] == "filesystem://"
    assert overrides["CELERY_BROKER_FOLDER"] == str(tmp_path / "broker")
    assert overrides["CELERY_RESULT_BACKEND"] == f"file://{tmp_path / 'results'}"


def test_the_embedded_cache_url_is_one_django_environ_understands():
    import environ

    config = environ.Env.cache_url_config("locmemcache://")
    assert config["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"


def test_var_dir_is_var_at_the_root_unless_fda_var_dir_is_set(tmp_path):
    assert var_dir({}) == ROOT / "var"
    assert var_dir({"FDA_VAR_DIR": str(tmp_path)}) == tmp_path


def test_services_that_answer_are_kept():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        env = {
            "DATABASE_URL": f"postgres://u@127.0.0.1:{port}/db",
            "CELERY_BROKER_URL": f"amqp://g:g@127.0.0.1:{port}//",
            "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{port}/0",
        }
        assert answers(env["DATABASE_URL"]) and embedded_fallbacks(env) == {}


# --- The pid file ---------------------------------------------------------------------------------


@pytest.fixture
def live_pid():
    """The pid of a process that is running (a sleep), for as long as the test lasts."""
    process = subprocess.Popen(["sleep", "300"])
    yield process.pid
    process.kill()
    process.wait()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen(["true"])
    process.wait()
    assert not pid_alive(process.pid)
    return process.pid


def test_a_claim_writes_this_process_pid(tmp_path):
    path = tmp_path / "run" / "devstack.pid"
    pidfile_claim(path)
    assert read_pid(path) == os.getpid()
    assert pidfile_release(path) and not path.exists()


def test_a_live_holder_is_refused_and_its_pid_file_left_alone(tmp_path, live_pid):
    path = tmp_path / "devstack.pid"
    path.write_text(f"{live_pid}\n")
    with pytest.raises(AlreadyRunning) as refused:
        pidfile_claim(path)
    assert refused.value.pid == live_pid
    assert path.read_text() == f"{live_pid}\n"


def test_a_stale_pid_file_is_taken_over(tmp_path, dead_pid):
    path = tmp_path / "devstack.pid"
    path.write_text(str(dead_pid))
    pidfile_claim(path)
    assert read_pid(path) == os.getpid()


def test_a_garbled_pid_file_is_taken_over(tmp_path):
    path = tmp_path / "devstack.pid"
    path.write_text("")
    pidfile_claim(path)
    assert read_pid(path) == os.getpid()


def test_only_the_process_that_wrote_the_pid_file_removes_it(tmp_path, live_pid):
    path = tmp_path / "devstack.pid"
    pidfile_claim(path, live_pid)
    assert not pidfile_release(path)  # this process is not the writer
    assert read_pid(path) == live_pid
    assert pidfile_release(path, live_pid) and not path.exists()


def test_of_simultaneous_claims_exactly_one_wins(tmp_path):
    """Many live processes claim the same stale pid file at once: one wins, the others are told
    the winner's pid, and the file names the winner."""
    path = tmp_path / "devstack.pid"
    path.write_text("999999999")  # stale: no such process
    sleepers = [subprocess.Popen(["sleep", "300"]) for _ in range(12)]
    try:
        barrier = threading.Barrier(len(sleepers))
        outcomes: dict[int, int | None] = {}

        def claim(pid: int) -> None:
            barrier.wait()
            try:
                pidfile_claim(path, pid)
                outcomes[pid] = None
            except AlreadyRunning as exc:
                outcomes[pid] = exc.pid

        threads = [threading.Thread(target=claim, args=(p.pid,)) for p in sleepers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        winners = [pid for pid, holder in outcomes.items() if holder is None]
        assert len(winners) == 1
        assert read_pid(path) == winners[0]
        assert all(holder == winners[0] for pid, holder in outcomes.items() if pid != winners[0])
    finally:
        for process in sleepers:
            process.kill()
            process.wait()


def test_simultaneous_claims_from_separate_processes(tmp_path):
    """The same, across processes (the lock is an flock, not a thread lock)."""
    path = tmp_path / "devstack.pid"
    code = (
        "import sys, time; from pathlib import Path; from devstack.runner import pidfile_claim, AlreadyRunning\n"
        "while time.time() < float(sys.argv[1]): pass\n"
        "try:\n    pidfile_claim(Path(sys.argv[2])); print('won', flush=True); time.sleep(5)\n"
        "except AlreadyRunning as exc:\n    print('refused', exc.pid, flush=True)\n"
    )
    start_at = str(time.time() + 2)
    claimants = [
        subprocess.Popen([sys.executable, "-c", code, start_at, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True) for _ in range(6)
    ]
    lines = [p.stdout.readline().split() for p in claimants]
    winners = [p.pid for p, line in zip(claimants, lines) if line == ["won"]]
    for p in claimants:
        p.kill()
        p.wait()
    assert len(winners) == 1, lines
    assert read_pid(path) == winners[0]
    assert all(line == ["refused", str(winners[0])] for p, line in zip(claimants, lines) if p.pid != winners[0])


def test_a_second_up_refuses_at_once_and_leaves_the_first_ones_state_alone(tmp_path, live_pid):
    var = tmp_path / "var"
    path = var / "run" / "devstack.pid"
    path.parent.mkdir(parents=True)
    path.write_text(f"{live_pid}\n")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["FDA_VAR_DIR"] = str(var)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "devstack", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"devstack: already running, pid {live_pid}; `make down` first" in done.stderr
    assert time.monotonic() - started < 20  # no migrations, no S3 server
    assert path.read_text() == f"{live_pid}\n"
    # Nothing else was touched: no database, broker folders or S3 data beside the pid file.
    assert sorted(p.name for p in var.iterdir()) == ["run"]
    assert pid_alive(live_pid)


def test_down_stops_the_process_named_in_the_pid_file_and_leaves_removal_to_it(tmp_path, live_pid):
    var = tmp_path / "var"
    path = var / "run" / "devstack.pid"
    path.parent.mkdir(parents=True)
    path.write_text(f"{live_pid}\n")
    env = {**os.environ, "FDA_VAR_DIR": str(var)}
    done = subprocess.run([sys.executable, "-m", "devstack", "down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "devstack: stopped" in done.stdout


def test_down_with_a_stale_pid_file_says_nothing_is_running(tmp_path, dead_pid):
    var = tmp_path / "var"
    (var / "run").mkdir(parents=True)
    (var / "run" / "devstack.pid").write_text(str(dead_pid))
    env = {**os.environ, "FDA_VAR_DIR": str(var)}
    done = subprocess.run([sys.executable, "-m", "devstack", "down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "nothing running" in done.stdout
