"""The Python client (sdk/python) against a real loopback HTTP server speaking the API's shapes
(tests/sdk/fakeapi.py): what it sends, what it makes of the answers, its retries and waits."""

import io
import json
import socket

import pytest
from face_detect_client import (
    AuthenticationError,
    BadRequest,
    Batch,
    BatchItem,
    Client,
    Conflict,
    Job,
    NotFound,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TransportError,
    WaitTimeout,
)

from tests.conftest import photo_bytes
from tests.sdk.fakeapi import API_KEY

PHOTO = photo_bytes("obama_1face.jpg")


def _upload(api, job: Job) -> dict:
    return api.jobs[job.id]["upload"]


# --- Submitting ---------------------------------------------------------------------------------


def test_a_path_is_uploaded_as_multipart_with_its_name_and_type(sdk, api, tmp_path):
    """submit_file(path): the file's bytes in the `image` part, its name and guessed type, the fields beside it."""
    path = tmp_path / "portrait.jpg"
    path.write_bytes(PHOTO)
    job = sdk.submit_file(path, request_id="r-1", callback_url="https://example.com/hook", labels=["face", "person"])
    assert (job.status, job.request_id) == ("queued", "r-1")
    assert _upload(api, job) == {"filename": "portrait.jpg", "content_type": "image/jpeg", "content": PHOTO}
    fields = api.jobs[job.id]["fields"]
    assert fields == {"request_id": "r-1", "callback_url": "https://example.com/hook", "labels": "face,person"}
    assert api.requests[0]["headers"]["Authorization"] == f"Api-Key {API_KEY}"


def test_bytes_and_file_objects_are_uploaded_too(sdk, api):
    """submit_file takes bytes and an open file (read from where it stands), besides a path."""
    from_bytes = sdk.submit_file(PHOTO, request_id="bytes", filename="a.png")
    stream = io.BytesIO(b"junk" + PHOTO)
    stream.seek(4)
    from_stream = sdk.submit_file(stream, request_id="stream")
    assert _upload(api, from_bytes) == {"filename": "a.png", "content_type": "image/png", "content": PHOTO}
    assert _upload(api, from_stream)["content"] == PHOTO
    assert _upload(api, from_stream)["filename"] == "image"


def test_without_a_request_id_each_submission_gets_a_fresh_one(sdk, api):
    """request_id defaults to a new UUID, so two calls make two jobs."""
    first, second = sdk.submit_file(PHOTO), sdk.submit_file(PHOTO)
    assert first.id != second.id and first.request_id != second.request_id and len(first.request_id) == 36


def test_a_url_job_is_a_json_body_with_image_url(sdk, api):
    """submit_url sends JSON (image_url and the options given), no multipart."""
    job = sdk.submit_url("https://photos.example.com/a.jpg", request_id="u-1", expires_in=600, labels="face")
    request = api.requests[-1]
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {
        "image_url": "https://photos.example.com/a.jpg",
        "request_id": "u-1",
        "expires_in": 600,
        "labels": "face",
    }
    assert sdk.get_job(job.id).image_url == "https://photos.example.com/a.jpg"


def test_a_batch_is_submitted_as_items_and_answers_its_urls(sdk, api):
    """submit_batch takes BatchItems and dicts alike (labels go as the JSON list a batch item takes,
    given as a list or a comma-separated string) and returns the batch's id, count and URLs."""
    batch = sdk.submit_batch(
        [
            BatchItem(request_id="b-1", image_url="https://p.example.com/1.jpg", labels=["face"]),
            {"request_id": "b-2", "image_url": "https://p.example.com/2.jpg", "labels": "face,person"},
        ],
        callback_url="https://example.com/batch-hook",
    )
    assert isinstance(batch, Batch) and (batch.status, batch.item_count) == ("running", 2)
    assert batch.results_url.endswith(f"/api/v1/batches/{batch.id}/results/")
    assert api.batches[batch.id]["body"] == {
        "items": [
            {"request_id": "b-1", "image_url": "https://p.example.com/1.jpg", "labels": ["face"]},
            {"request_id": "b-2", "image_url": "https://p.example.com/2.jpg", "labels": ["face", "person"]},
        ],
        "callback_url": "https://example.com/batch-hook",
    }


# --- Errors -------------------------------------------------------------------------------------


def test_a_refused_batch_item_is_a_bad_request_naming_the_item(sdk):
    """The API's error code and field reach the caller: items[1].image_url."""
    with pytest.raises(BadRequest) as caught:
        sdk.submit_batch([{"request_id": "ok", "image_url": "https://p.example.com/1.jpg"}, {"request_id": "bad", "image_url": "ftp://x"}])
    error = caught.value
    assert (error.status_code, error.code, error.field) == (400, "invalid", "items[1].image_url")
    assert error.message == "Enter a valid URL." and error.request_id == "fake-request-id"


def test_a_wrong_key_is_an_authentication_error(api, clock):
    """401 becomes AuthenticationError with the API's code."""
    with Client(api.url, "wrong-key") as bad, pytest.raises(AuthenticationError) as caught:
        bad.get_job("x")
    assert caught.value.code == "invalid_api_key" and caught.value.field is None


def test_an_unknown_job_is_not_found(sdk):
    with pytest.raises(NotFound) as caught:
        sdk.get_job("no-such-job")
    assert caught.value.code == "not_found"


def test_an_answer_not_in_the_api_shape_still_is_a_typed_error(sdk, api, clock):
    """A proxy's HTML 502 is a ServerError with a code made from the status, not the page's text; not retried."""
    api.html_errors.append(502)
    with pytest.raises(ServerError) as caught:
        sdk.get_job("x")
    assert (caught.value.status_code, caught.value.code, caught.value.field) == (502, "http_502", None)
    assert "<html>" not in str(caught.value) and clock.sleeps == []


def test_an_unreachable_service_is_a_transport_error_after_the_retries(clock):
    """Connections refused are tried max_retries more times with backoff, then TransportError."""
    with socket.socket() as probe:  # a port nothing listens on: bound, then let go
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with Client(f"http://127.0.0.1:{port}", API_KEY, max_retries=2) as c, pytest.raises(TransportError):
        c.get_job("x")
    assert len(clock.sleeps) == 2 and 0.25 <= clock.sleeps[0] <= 0.5 and 0.5 <= clock.sleeps[1] <= 1.0


# --- Retries ------------------------------------------------------------------------------------


def test_a_429_is_retried_after_retry_after(sdk, api, clock):
    """A rate-limited upload is sent again after the seconds Retry-After says, bytes and all."""
    api.refusals.extend([(429, "3"), (429, "1")])
    job = sdk.submit_file(io.BytesIO(PHOTO), request_id="retried")
    assert clock.sleeps == [3.0, 1.0]
    assert [r["method"] for r in api.requests] == ["POST", "POST", "POST"]
    assert _upload(api, job)["content"] == PHOTO  # the file was rewound for each attempt


def test_a_503_is_retried_too(sdk, api, clock):
    api.refusals.append((503, "2"))
    assert sdk.submit_url("https://p.example.com/1.jpg").status == "queued"
    assert clock.sleeps == [2.0]


def test_a_429_that_persists_is_raised_with_its_retry_after(api, clock):
    """After max_retries the 429 is raised as RateLimited, carrying the API's code and Retry-After."""
    api.refusals.extend([(429, "1")] * 3)
    with Client(api.url, API_KEY, max_retries=2) as c, pytest.raises(RateLimited) as caught:
        c.submit_file(PHOTO)
    assert (caught.value.code, caught.value.retry_after) == ("throttled", 1.0)
    assert clock.sleeps == [1.0, 1.0] and len(api.requests) == 3


def test_a_retry_after_longer_than_the_client_waits_is_raised_at_once(sdk, api, clock):
    """Retry-After past max_retry_wait (60 s): ServiceUnavailable now, not a minute's sleep."""
    api.refusals.append((503, "3600"))
    with pytest.raises(ServiceUnavailable) as caught:
        sdk.get_job("x")
    assert caught.value.retry_after == 3600.0 and clock.sleeps == []


def test_other_errors_are_not_retried(sdk, api, clock):
    with pytest.raises(BadRequest):
        sdk.submit_url("")
    assert len(api.requests) == 1 and clock.sleeps == []


# --- Waiting ------------------------------------------------------------------------------------


def test_wait_polls_with_growing_intervals_until_the_job_ends(sdk, api, clock):
    """queued -> processing x3 -> completed: four sleeps, each twice the last, capped; the faces come back."""
    job_id = api.add_job(script=["processing", "processing", "processing", "processing", "completed"])
    job = sdk.wait(job_id, poll_interval=0.5, max_poll_interval=3)
    assert job.status == "completed" and job.is_terminal
    assert job.face_count == 1 and job.faces[0]["box"] == {"x": 181, "y": 62, "width": 87, "height": 110}
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("status", ["failed", "canceled", "expired"])
def test_wait_returns_at_every_terminal_status(sdk, api, status):
    job = sdk.wait(api.add_job(script=["processing", status]))
    assert job.status == status and job.error is not None and job.is_terminal


def test_wait_gives_up_at_its_deadline_with_the_last_job_seen(sdk, api, clock):
    """A job that never ends: WaitTimeout after `timeout` seconds of waiting, not later."""
    job_id = api.add_job(script=["processing"] * 1000)
    with pytest.raises(WaitTimeout) as caught:
        sdk.wait(job_id, timeout=20, poll_interval=1, max_poll_interval=8)
    assert caught.value.job.id == job_id and caught.value.job.status == "processing"
    assert clock.sleeps == [1, 2, 4, 8, 5] and sum(clock.sleeps) == 20
    assert str(caught.value) == f"job {job_id} still processing after 20 s"


def test_wait_batch_gives_up_at_its_deadline_with_the_last_batch_seen(sdk, api, clock):
    batch = sdk.submit_batch([{"request_id": "slow", "image_url": "https://p.example.com/1.jpg"}])
    api.script[api.batches[batch.id]["jobs"][0]] = ["processing"] * 1000
    with pytest.raises(WaitTimeout) as caught:
        sdk.wait_batch(batch, timeout=10, poll_interval=1)
    assert isinstance(caught.value.job, Batch) and caught.value.job.counts == {"processing": 1}
    assert str(caught.value) == f"batch {batch.id} still running after 10 s" and sum(clock.sleeps) == 10


def test_a_retry_that_would_pass_the_deadline_is_not_slept(sdk, api, clock):
    """wait's deadline bounds the retries too: a 429 asking for more time than is left is raised."""
    job_id = api.add_job(script=["processing"] * 10)
    api.refusals.append((429, "30"))
    with pytest.raises(RateLimited):
        sdk.wait(job_id, timeout=10)
    assert clock.sleeps == []


# --- Cancel -------------------------------------------------------------------------------------


def test_a_queued_job_is_canceled(sdk, api):
    job = sdk.cancel_job(api.add_job())
    assert job.status == "canceled" and job.error.code == "canceled"


@pytest.mark.parametrize(("status", "code"), [("processing", "job_already_started"), ("completed", "job_finished")])
def test_a_started_or_ended_job_cannot_be_canceled(sdk, api, status, code):
    with pytest.raises(Conflict) as caught:
        sdk.cancel_job(api.add_job(status=status))
    assert (caught.value.status_code, caught.value.code) == (409, code)


def test_a_batch_is_canceled_and_its_queued_items_with_it(sdk, api):
    batch = sdk.submit_batch([{"request_id": f"c-{i}", "image_url": f"https://p.example.com/{i}.jpg"} for i in range(3)])
    canceled = sdk.cancel_batch(batch)
    assert canceled.status == "canceled" and canceled.is_terminal
    assert canceled.counts == {"canceled": 3} and {item.status for item in canceled.items} == {"canceled"}


# --- Batch results ------------------------------------------------------------------------------


def test_batch_results_are_read_line_by_line_as_they_stream(sdk, api):
    """The first job arrives while the server still holds back the rest: the client streams."""
    batch = sdk.submit_batch([{"request_id": f"s-{i}", "image_url": f"https://p.example.com/{i}.jpg"} for i in range(3)])
    sdk.wait_batch(batch)
    api.hold_results.clear()
    results = sdk.iter_batch_results(batch.id)
    first = next(results)
    assert not api.results_held_until_timeout  # read before the server let go of the rest
    api.hold_results.set()
    jobs = [first, *results]
    assert [job.request_id for job in jobs] == ["s-0", "s-1", "s-2"]
    assert all(job.status == "completed" and job.batch_id == batch.id and job.face_count == 1 for job in jobs)


def test_wait_batch_returns_once_every_item_ended(sdk, api, clock):
    batch = sdk.submit_batch([{"request_id": "w-1", "image_url": "https://p.example.com/1.jpg"}])
    done = sdk.wait_batch(batch.id, poll_interval=1)
    assert done.status == "completed" and done.counts == {"completed": 1} and clock.sleeps == [1]


def test_the_base_url_may_name_the_api_prefix(api, clock):
    """Client('https://host/api/v1/') works as Client('https://host')."""
    with Client(f"{api.url}/api/v1/", API_KEY) as c:
        assert c.cancel_job(api.add_job()).status == "canceled"
