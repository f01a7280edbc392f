"""The HTTP client: one ``Client`` per service and API key, on one httpx connection pool."""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from email.utils import parsedate_to_datetime
from typing import IO, Any, Union

import httpx

from . import __version__
from .errors import ApiError, TransportError, WaitTimeout, error_class
from .models import Batch, BatchItem, Job

# What submit_file takes: a path, the bytes themselves, or an open binary file.
FileInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes]]

# 429 (rate limit) and 503 (a dependency down) say the request was not acted on: sending it again
# is safe, after Retry-After. Submissions are idempotent per request_id besides.
RETRY_STATUSES = frozenset({429, 503})

# Indirections the tests replace with a fake clock, so that waits take no real time.
_monotonic = time.monotonic
_sleep = time.sleep


class Client:
    """A client of one face_detect_api service.

    ``base_url``: the service's root (``https://faces.example.com``); ``api_key``: sent as
    ``Authorization: Api-Key <key>``; ``timeout``: seconds for each HTTP request (connect, read,
    write). 429 and 503 answers, and connections that could not be made, are tried again up to
    ``max_retries`` times, waiting Retry-After when the answer has one (else an exponential
    backoff from ``retry_backoff`` seconds); an answer asking to wait longer than
    ``max_retry_wait`` seconds is raised at once rather than slept on.

    Use it as a context manager, or call ``close()``, to release its connections.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        timeout: float = 30.0,
        *,
        max_retries: int = 4,
        retry_backoff: float = 0.5,
        max_retry_wait: float = 60.0,
        user_agent: str | None = None,
    ) -> None:
        root = base_url.rstrip("/")
        root = root.removesuffix("/api/v1")  # either the root or the API's prefix will do
        self.base_url = root
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.max_retry_wait = max_retry_wait
        self._http = httpx.Client(
            base_url=f"{root}/api/v1/",
            timeout=timeout,
            headers={"Authorization": f"Api-Key {api_key}", "User-Agent": user_agent or f"face-detect-client/{__version__}"},
            # The API answers what it is asked; a redirect would be a misconfigured base_url.
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Jobs -----------------------------------------------------------------------------------

    def submit_file(
        self,
        file: FileInput,
        *,
        request_id: str | None = None,
        filename: str | None = None,
        callback_url: str | None = None,
        model_version: str | None = None,
        cohort: str | None = None,
        labels: Iterable[str] | str | None = None,
        expires_in: int | None = None,
    ) -> Job:
        """Upload a photo (multipart ``image``): a path, bytes, or a binary file object (read from
        its current position). ``request_id`` defaults to a new UUID; it makes the submission
        idempotent, so a retried upload never makes a second job. Returns the queued job (or the
        existing one, when this request_id was already submitted with this photo)."""
        opener = _file_opener(file, filename)
        fields = _fields(
            request_id=request_id or str(uuid.uuid4()),
            callback_url=callback_url,
            model_version=model_version,
            cohort=cohort,
            labels=_labels(labels),
            expires_in=expires_in,
        )
        response = self._request(
            "POST", "images/", data={k: str(v) for k, v in fields.items()}, files=lambda opened: {"image": opener(opened)}
        )
        return Job.from_json(response.json())

    def submit_url(
        self,
        image_url: str,
        *,
        request_id: str | None = None,
        callback_url: str | None = None,
        model_version: str | None = None,
        cohort: str | None = None,
        labels: Iterable[str] | str | None = None,
        expires_in: int | None = None,
    ) -> Job:
        """Have the service fetch the photo from ``image_url`` (http or https) itself. A photo it
        cannot fetch ends the job ``failed`` (error codes image_fetch_failed, image_too_large,
        image_url_refused, unsupported_image), not the request."""
        body = _fields(
            image_url=image_url,
            request_id=request_id or str(uuid.uuid4()),
            callback_url=callback_url,
            model_version=model_version,
            cohort=cohort,
            labels=_labels(labels),
            expires_in=expires_in,
        )
        return Job.from_json(self._request("POST", "images/", body=body).json())

    def get_job(self, job_id: str | Job) -> Job:
        return Job.from_json(self._request("GET", f"images/{_id(job_id)}/").json())

    def cancel_job(self, job_id: str | Job) -> Job:
        """Cancel a job that has not started: it ends ``canceled``. A job already processing
        raises Conflict ``job_already_started``; one that ended, Conflict ``job_finished``."""
        return Job.from_json(self._request("POST", f"images/{_id(job_id)}/cancel/").json())

    def wait(
        self,
        job_id: str | Job,
        *,
        timeout: float = 300.0,
        poll_interval: float = 0.5,
        max_poll_interval: float = 10.0,
        backoff: float = 2.0,
    ) -> Job:
        """Poll the job until it ends (completed, failed, canceled, expired or deleted) and return
        it. The interval starts at ``poll_interval`` and grows ``backoff`` times per poll up to
        ``max_poll_interval``; past ``timeout`` seconds, WaitTimeout (carrying the last job seen).
        Whether it succeeded is the job's business: check ``job.status`` and ``job.error``."""
        return self._poll(
            f"images/{_id(job_id)}/",
            Job.from_json,
            timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            backoff=backoff,
        )

    # --- Batches --------------------------------------------------------------------------------

    def submit_batch(
        self,
        items: Iterable[BatchItem | Mapping[str, Any]],
        *,
        callback_url: str | None = None,
        expires_in: int | None = None,
    ) -> Batch:
        """Submit many photos by URL at once. Each item is a BatchItem or a dict with the same
        keys (request_id, image_url, and optionally model_version, labels, cohort); each becomes
        an ordinary job. A bad item is a BadRequest whose ``field`` names it
        (``items[3].image_url``), and nothing is submitted."""
        body = _fields(items=[_batch_item(item) for item in items], callback_url=callback_url, expires_in=expires_in)
        return Batch.from_json(self._request("POST", "batches/", body=body).json())

    def get_batch(self, batch_id: str | Batch) -> Batch:
        return Batch.from_json(self._request("GET", f"batches/{_id(batch_id)}/").json())

    def cancel_batch(self, batch_id: str | Batch) -> Batch:
        """Cancel the batch: its items that have not started end ``canceled``."""
        return Batch.from_json(self._request("POST", f"batches/{_id(batch_id)}/cancel/").json())

    def wait_batch(
        self,
        batch_id: str | Batch,
        *,
        timeout: float = 600.0,
        poll_interval: float = 1.0,
        max_poll_interval: float = 15.0,
        backoff: float = 2.0,
    ) -> Batch:
        """As ``wait``, for a batch: until it is completed (every item ended) or canceled."""
        return self._poll(
            f"batches/{_id(batch_id)}/",
            Batch.from_json,
            timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            backoff=backoff,
        )

    def iter_batch_results(self, batch_id: str | Batch) -> Iterator[Job]:
        """Each job of the batch, read as the service streams them (JSON Lines): a big batch is
        never held whole in memory, by the service or here. Close the iterator (or finish it) to
        release the connection."""
        response = self._request("GET", f"batches/{_id(batch_id)}/results/", stream=True)
        try:
            for line in response.iter_lines():
                if line.strip():
                    yield Job.from_json(json.loads(line))
        finally:
            response.close()

    # --- The machinery --------------------------------------------------------------------------

    def _poll(
        self, path: str, parse: Callable[[Any], Any], *, timeout: float, poll_interval: float, max_poll_interval: float, backoff: float
    ) -> Any:
        """GET ``path`` until what ``parse`` makes of it is terminal; retries stop at the deadline too."""
        deadline = _monotonic() + timeout
        interval = poll_interval
        while True:
            current = parse(self._request("GET", path, deadline=deadline).json())
            if current.is_terminal:
                return current
            remaining = deadline - _monotonic()
            if remaining <= 0:
                raise WaitTimeout(current, timeout)
            _sleep(min(interval, remaining))
            interval = min(interval * backoff, max_poll_interval)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        data: dict[str, str] | None = None,
        files: Callable[[contextlib.ExitStack], dict[str, Any]] | None = None,
        stream: bool = False,
        deadline: float | None = None,
    ) -> httpx.Response:
        """The answer to one API call, after the retries; an ApiError for an error status. ``body``:
        sent as JSON; ``data`` and ``files``: as multipart, the files made afresh for each attempt
        (httpx reads them to the end), those opened here closed once it is sent."""
        attempt = 0
        while True:
            try:
                with contextlib.ExitStack() as opened:
                    request = self._http.build_request(method, path, json=body, data=data, files=files(opened) if files else None)
                    response = self._http.send(request, stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # No connection, so nothing was sent: safe to try again.
                delay = self._backoff(attempt)
                if attempt >= self.max_retries or not self._may_wait(delay, deadline):
                    raise TransportError(f"cannot reach {self.base_url}: {exc}") from exc
            except httpx.HTTPError as exc:
                raise TransportError(f"{method} {path} failed: {exc}") from exc
            else:
                if response.is_success:
                    return response
                if stream:
                    response.read()
                    response.close()
                error = _api_error(response)
                if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
                    raise error
                delay = error.retry_after if error.retry_after is not None else self._backoff(attempt)
                if delay > self.max_retry_wait or not self._may_wait(delay, deadline):
                    raise error
            _sleep(delay)
            attempt += 1

    def _backoff(self, attempt: int) -> float:
        # Exponential, with jitter so that many clients refused at once do not return at once.
        return min(self.retry_backoff * 2**attempt, self.max_retry_wait) * random.uniform(0.5, 1.0)

    @staticmethod
    def _may_wait(delay: float, deadline: float | None) -> bool:
        return deadline is None or _monotonic() + delay <= deadline


# --- Helpers ------------------------------------------------------------------------------------


def _id(value: str | Job | Batch) -> str:
    return value.id if isinstance(value, (Job, Batch)) else str(value)


def _fields(**fields: Any) -> dict[str, Any]:
    """The given fields, without those left out (None): the API applies its defaults."""
    return {name: value for name, value in fields.items() if value is not None}


def _labels(labels: Iterable[str] | str | None) -> str | None:
    # The API's `labels` is one string, names separated by commas (e.g. "person,cat").
    if labels is None or isinstance(labels, str):
        return labels
    return ",".join(labels)


def _batch_item(item: BatchItem | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(item, BatchItem):
        fields = _fields(
            request_id=item.request_id, image_url=item.image_url, model_version=item.model_version, labels=item.labels, cohort=item.cohort
        )
    else:
        fields = dict(item)
    # A batch item's `labels` is a JSON list of names (an upload's is one comma-separated string).
    labels = fields.get("labels")
    if isinstance(labels, str):
        fields["labels"] = [name for name in labels.split(",") if name]
    elif labels is not None:
        fields["labels"] = list(labels)
    return fields


def _file_opener(file: FileInput, filename: str | None) -> Callable[[contextlib.ExitStack], tuple[str, Any, str]]:
    """A function giving httpx's (filename, content, content type) for each attempt: a path is
    opened afresh, a file at its start streamed (httpx rewinds it), anything else read into memory."""
    if isinstance(file, (str, os.PathLike)):
        path = os.fspath(file)
        name = filename or os.path.basename(path)
        return lambda opened: (name, opened.enter_context(open(path, "rb")), _content_type(name))
    if isinstance(file, (bytes, bytearray, memoryview)):
        content = bytes(file)
        name = filename or "image"
        return lambda opened: (name, content, _content_type(name))
    name = filename or os.path.basename(str(getattr(file, "name", "") or "")) or "image"
    # httpx streams a file object from its start (it seeks to 0 for each attempt, and sizes the
    # part from the whole file); one read from elsewhere is held in memory instead.
    if file.seekable() and file.tell() == 0:
        return lambda opened: (name, file, _content_type(name))
    content = file.read()
    return lambda opened: (name, content, _content_type(name))


def _content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        # An HTTP date (RFC 9110 allows either form).
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _api_error(response: httpx.Response) -> ApiError:
    try:
        body = response.json()
        error = body["error"]
        code, message = str(error["code"]), str(error.get("message") or "")
        field, details = error.get("field"), error.get("details")
    except (ValueError, KeyError, TypeError):
        # Not the API's error shape: a proxy's page, say. Its text is not ours to show.
        code, message, field, details = f"http_{response.status_code}", f"HTTP {response.status_code} {response.reason_phrase}", None, None
    return error_class(response.status_code)(
        response.status_code,
        code,
        message,
        field=field,
        details=details,
        retry_after=_retry_after(response),
        request_id=response.headers.get("X-Request-ID"),
    )
