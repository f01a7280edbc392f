"""jobs/fetch.py against a real HTTP server on loopback (tests/photoserver.py): what is fetched,
what is refused, and which limits hold."""

import hashlib
import time

import pytest

from callbacks.urlpolicy import UrlRefused
from jobs.fetch import FetchFailed, image_fetch, image_url_check
from tests.conftest import TESTDATA
from tests.photoserver import PhotoServer


def _sha(name: str) -> str:
    return hashlib.sha256((TESTDATA / name).read_bytes()).hexdigest()


def test_a_photo_is_fetched_with_the_uploads_checks(photoserver):
    """The bytes come back whole, probed like an upload's (format, size, sha256)."""
    fetched = image_fetch(photoserver.url("/photos/obama_1face.jpg"))
    assert fetched.data == (TESTDATA / "obama_1face.jpg").read_bytes()
    assert fetched.info.sha256 == _sha("obama_1face.jpg")
    assert fetched.info.content_type == "image/jpeg" and fetched.info.width > 0


def test_redirects_are_followed_up_to_the_limit(photoserver, settings):
    """Redirects within IMAGE_URL_MAX_REDIRECTS are followed; one more fails the fetch."""
    settings.IMAGE_URL_MAX_REDIRECTS = 2
    fetched = image_fetch(photoserver.url("/redirect/2/photos/chelsea_cat.png"))
    assert fetched.info.sha256 == _sha("chelsea_cat.png")
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url("/redirect/3/photos/chelsea_cat.png"))
    assert caught.value.code == "image_fetch_failed"
    assert "redirected more than 2" in caught.value.message


def test_a_redirect_to_a_refused_address_is_never_followed(photoserver, settings):
    """A redirect to an address outside the allowed ranges fails with image_url_refused, and
    that address is never asked."""
    target = PhotoServer(host="127.0.0.2").start()
    try:
        settings.IMAGE_URL_ALLOWED_NETWORKS = ["127.0.0.1/32"]
        with pytest.raises(FetchFailed) as caught:
            image_fetch(photoserver.url(f"/redirect-to?url={target.url('/photos/obama_1face.jpg')}"))
        assert caught.value.code == "image_url_refused"
        assert target.requests == []
        assert photoserver.count("/redirect-to") == 1
    finally:
        target.stop()


@pytest.mark.parametrize("address", ["10.0.0.1", "169.254.169.254", "192.168.1.1", "[::1]", "0.0.0.0"])
def test_a_redirect_to_a_private_or_metadata_address_is_refused(photoserver, address):
    """Link-local (cloud metadata), private, loopback v6 and unspecified redirect targets are refused."""
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url(f"/redirect-to?url=http://{address}/latest/meta-data/"))
    assert caught.value.code == "image_url_refused"
    # The address is logged, never told: the job's error would map the private network.
    assert address.strip("[]") not in caught.value.message


def test_a_redirect_to_a_malformed_url_fails_with_a_code(photoserver):
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url("/redirect-to?url=http://[::1"))
    assert caught.value.code == "image_fetch_failed"


def test_the_url_itself_is_checked_again_at_fetch_time(photoserver, settings):
    """A URL allowed at submission but refused by the time it is fetched is not fetched."""
    settings.IMAGE_URL_ALLOWED_NETWORKS = []
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url("/photos/obama_1face.jpg"))
    assert caught.value.code == "image_url_refused"
    assert photoserver.requests == []


def test_an_endless_body_stops_at_the_upload_limit(photoserver, settings):
    """A body without Content-Length is counted as it comes and cut past MAX_UPLOAD_BYTES."""
    settings.MAX_UPLOAD_BYTES = 1024 * 1024
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url("/huge"))
    assert caught.value.code == "image_too_large"


def test_a_declared_oversized_body_is_refused_before_reading(photoserver):
    """A Content-Length past MAX_UPLOAD_BYTES is refused from the header."""
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url("/huge-declared"))
    assert caught.value.code == "image_too_large"
    assert str(10**12) in caught.value.message


def test_a_photo_past_the_pixel_limit_is_too_large(photoserver, settings):
    """The uploads' pixel limit holds for fetched photos."""
    settings.MAX_IMAGE_PIXELS = 1000
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url("/photos/obama_1face.jpg"))
    assert caught.value.code == "image_too_large"


def test_content_that_is_not_an_image_is_unsupported(photoserver):
    """The content is sniffed, whatever the Content-Type says."""
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url("/text"))
    assert caught.value.code == "unsupported_image"


def test_a_slow_body_ends_at_the_total_timeout_and_is_retried(photoserver, settings):
    """A server that trickles is cut at IMAGE_URL_TOTAL_TIMEOUT, each try, then the fetch fails."""
    settings.IMAGE_URL_READ_TIMEOUT = 5.0
    settings.IMAGE_URL_TOTAL_TIMEOUT = 0.5
    settings.IMAGE_URL_FETCH_ATTEMPTS = 2
    started = time.monotonic()
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url("/slow"))
    assert caught.value.code == "image_fetch_failed"
    assert photoserver.count("/slow") == 2
    assert time.monotonic() - started < 5.0  # the read timeout (5 s) was never waited out


def test_a_server_error_is_retried_then_succeeds(photoserver, settings):
    """500 then 200: the second try gets the photo."""
    settings.IMAGE_URL_FETCH_ATTEMPTS = 3
    fetched = image_fetch(photoserver.url("/flaky/a/photos/obama_1face.jpg"))
    assert fetched.info.sha256 == _sha("obama_1face.jpg")
    assert photoserver.count("/flaky/a/") == 2


@pytest.mark.parametrize("code", [500, 503, 429])
def test_transient_statuses_fail_after_every_try(photoserver, settings, code):
    """5xx and 429 are tried IMAGE_URL_FETCH_ATTEMPTS times, then image_fetch_failed."""
    settings.IMAGE_URL_FETCH_ATTEMPTS = 3
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url(f"/status/{code}"))
    assert caught.value.code == "image_fetch_failed"
    assert photoserver.count(f"/status/{code}") == 3


@pytest.mark.parametrize("code", [404, 403, 410])
def test_client_errors_fail_at_once(photoserver, code):
    """4xx other than 429 is not retried."""
    with pytest.raises(FetchFailed) as caught:
        image_fetch(photoserver.url(f"/status/{code}"))
    assert caught.value.code == "image_fetch_failed"
    assert str(code) in caught.value.message
    assert photoserver.count(f"/status/{code}") == 1


def test_a_refused_connection_is_retried_then_fails(settings):
    """Nothing listening: tried every time, then image_fetch_failed."""
    settings.IMAGE_URL_FETCH_ATTEMPTS = 2
    server = PhotoServer().start()
    url = server.url("/photos/obama_1face.jpg")
    server.stop()
    with pytest.raises(FetchFailed) as caught:
        image_fetch(url)
    assert caught.value.code == "image_fetch_failed"
    assert "connection failed" in caught.value.message


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://10.0.0.1/a.jpg", "image_url_refused"),
        ("http://169.254.169.254/latest/meta-data/", "image_url_refused"),
        ("http://[::ffff:10.0.0.1]/a.jpg", "image_url_refused"),
        ("http://user:pw@127.0.0.1/a.jpg", "image_url_refused"),
        ("ftp://127.0.0.1/a.jpg", "invalid_scheme"),
        ("file:///etc/passwd", "invalid_scheme"),
    ],
)
def test_submission_check_refuses(url, code):
    """image_url_check refuses private addresses, credentials and other schemes."""
    with pytest.raises(UrlRefused) as caught:
        image_url_check(url)
    assert caught.value.code == code


def test_submission_check_allows_the_opened_range(photoserver):
    """IMAGE_URL_ALLOWED_NETWORKS (127.0.0.0/8 in the tests) opens loopback."""
    image_url_check(photoserver.url("/photos/obama_1face.jpg"))


def test_the_connection_goes_to_the_checked_address_with_the_urls_host(photoserver, monkeypatch):
    """A name is resolved once per hop and connected to by address: the fetch works for a name
    no resolver knows (photos.test) once the check's lookup gave its address, and the server
    sees the URL's host in the Host header."""
    import ipaddress

    looked_up = []

    def resolve(host, port):
        looked_up.append(host)
        return [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr("jobs.fetch.resolve", resolve)
    fetched = image_fetch(f"http://photos.test:{photoserver.port}/photos/chelsea_cat.png")
    assert fetched.info.sha256 == _sha("chelsea_cat.png")
    assert looked_up == ["photos.test"]
    assert photoserver.hosts == [f"photos.test:{photoserver.port}"]


def test_a_name_that_rebinds_to_a_refused_address_is_not_fetched(photoserver, monkeypatch):
    """The fetch resolves again and checks what it got (DNS rebinding after the submission's check)."""
    import ipaddress

    monkeypatch.setattr("jobs.fetch.resolve", lambda host, port: [ipaddress.ip_address("10.0.0.7")])
    with pytest.raises(FetchFailed) as caught:
        image_fetch(f"http://photos.test:{photoserver.port}/photos/chelsea_cat.png")
    assert caught.value.code == "image_url_refused"
    assert photoserver.requests == []


def test_https_is_verified_against_the_urls_host(photoserver, settings, monkeypatch):
    """An https URL whose server does not speak TLS (here: plain HTTP) is a failed fetch, not a
    fallback to plain text."""
    import ipaddress

    settings.IMAGE_URL_FETCH_ATTEMPTS = 1
    monkeypatch.setattr("jobs.fetch.resolve", lambda host, port: [ipaddress.ip_address("127.0.0.1")])
    with pytest.raises(FetchFailed) as caught:
        image_fetch(f"https://photos.test:{photoserver.port}/photos/chelsea_cat.png")
    assert caught.value.code == "image_fetch_failed"
