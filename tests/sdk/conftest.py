import pytest
from face_detect_client import Client
from face_detect_client import client as client_module

from tests.sdk.fakeapi import API_KEY, FakeApi


@pytest.fixture
def api():
    server = FakeApi()
    yield server
    server.hold_results.set()
    server.close()


@pytest.fixture
def clock(monkeypatch):
    """The client's clock, made fake: sleeps return at once and are recorded; time moves only by them."""

    class FakeClock:
        now = 1000.0
        sleeps: list[float] = []

        def monotonic(self) -> float:
            return self.now

        def sleep(self, seconds: float) -> None:
            self.sleeps.append(seconds)
            self.now += seconds

    fake = FakeClock()
    fake.sleeps = []
    monkeypatch.setattr(client_module, "_monotonic", fake.monotonic)
    monkeypatch.setattr(client_module, "_sleep", fake.sleep)
    return fake


@pytest.fixture
def sdk(api, clock):
    """A client of the fake API (named so as not to hide pytest-django's `client`)."""
    with Client(api.url, API_KEY, timeout=10) as c:
        yield c
