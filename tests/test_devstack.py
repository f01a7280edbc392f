"""The local runner's choice between real services and embedded stand-ins."""

import socket

from devstack.__main__ import VAR, answers, embedded_fallbacks


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_services_that_do_not_answer_are_replaced_by_embedded_ones():
    port = _dead_port()
    overrides = embedded_fallbacks(
        {
            "DATABASE_URL": f"postgres://u@127.0.0.1:{port}/db",
            "CELERY_BROKER_URL": f"amqp://g:g@127.0.0.1:{port}//",
            "CELERY_RESULT_BACKEND": f"redis://127.0.0.1:{port}/0",
            "CACHE_URL": f"redis://127.0.0.1:{port}/1",
        }
    )
    assert overrides["CACHE_URL"] == "locmem://"
    assert overrides["DATABASE_URL"] == f"sqlite:///{VAR / 'db.sqlite3'}"
    assert overrides["CELERY_BROKER_URL"] == "filesystem://"
    assert overrides["CELERY_RESULT_BACKEND"].startswith("file://")


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
