"""A small real HTTP server that speaks the face_detect_api shapes the client uses (the agreed
interface: uploads and URL jobs on POST images/, cancel, batches and their JSON Lines results),
kept in memory. The client's unit tests talk to it over loopback HTTP; the end-to-end tests
(tests/e2e/test_sdk.py) talk to the real service instead."""

import json
import threading
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TERMINAL = {"completed", "failed", "canceled", "expired", "deleted"}
API_KEY = "good-key"


def job_representation(job_id: str, request_id: str, status: str, **extra) -> dict:
    """A job as GET images/{id}/ shows it (api/serializers.py ImageSerializer), in brief."""
    return {
        "id": job_id,
        "request_id": request_id,
        "status": status,
        "status_url": f"http://testserver/api/v1/images/{job_id}/",
        "created_at": "2026-12-03T06:00:00Z",
        "started_at": None,
        "finished_at": None,
        "model_version": None,
        "rollout": None,
        "width": None,
        "height": None,
        "face_count": None,
        "faces": [],
        "detection_count": None,
        "detections": [],
        "labels": None,
        "error": None,
        "output_image_url": None,
        "image_url": None,
        "expires_at": None,
        "batch_id": None,
        "callback": {"url": None, "status": "none", "webhook_id": None, "attempts": [], "delivered_at": None, "next_attempt_at": None},
        **extra,
    }


FACE = {
    "box": {"x": 181, "y": 62, "width": 87, "height": 110},
    "confidence": 0.99,
    "landmarks": {"left_eye": [205.1, 105.2], "right_eye": [245.3, 104.9]},
}


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        self.status, self.code, self.message, self.field = status, code, message, field


class FakeApi:
    """The server and its state. ``script[job_id]``: the statuses a job moves through, one per
    GET; ``refusals``: (status, Retry-After or None) answered to the next requests, before any
    other check; ``requests``: every request seen (method, path, headers, body)."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.script: dict[str, list[str]] = {}
        self.batches: dict[str, dict] = {}
        self.refusals: list[tuple[int, str | None]] = []
        self.html_errors: list[int] = []  # statuses to answer with an HTML page, as a proxy would
        self.requests: list[dict] = []
        # Results stream: after the first line, wait until the test sets this (or 10 s pass).
        self.hold_results = threading.Event()
        self.hold_results.set()
        self.results_held_until_timeout = False
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                api._handle(self, "GET")

            def do_POST(self):
                api._handle(self, "POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add_job(self, status: str = "queued", script: list[str] | None = None, **extra) -> str:
        job_id = str(uuid.uuid4())
        self.jobs[job_id] = job_representation(job_id, f"req-{job_id[:8]}", status, **extra)
        self.script[job_id] = list(script or [])
        return job_id

    # --- Dispatch -------------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        self.requests.append({"method": method, "path": handler.path, "headers": dict(handler.headers), "body": body})
        try:
            with self.lock:
                if self.html_errors:
                    page = b"<html><body>Bad Gateway</body></html>"
                    handler.send_response(self.html_errors.pop(0))
                    handler.send_header("Content-Type", "text/html")
                    handler.send_header("Content-Length", str(len(page)))
                    handler.end_headers()
                    handler.wfile.write(page)
                    return
                if self.refusals:
                    status, retry_after = self.refusals.pop(0)
                    code = "throttled" if status == 429 else "storage_unavailable"
                    self._send_json(handler, status, _error(code, "Try again later."), {"Retry-After": retry_after} if retry_after else {})
                    return
            if handler.headers.get("Authorization") != f"Api-Key {API_KEY}":
                raise ApiError(401, "invalid_api_key", "Invalid or revoked API key.")
            parts = handler.path.removeprefix("/api/v1/").strip("/").split("/")
            route = (method, parts[0], len(parts), parts[-1] if len(parts) == 3 else None)
            if route == ("POST", "images", 1, None):
                return self._submit(handler, body)
            if route == ("GET", "images", 2, None):
                return self._send_json(handler, 200, self._job_get(parts[1]))
            if route == ("POST", "images", 3, "cancel"):
                return self._send_json(handler, 200, self._job_cancel(parts[1]))
            if route == ("POST", "batches", 1, None):
                return self._batch_submit(handler, body)
            if route == ("GET", "batches", 2, None):
                return self._send_json(handler, 200, self._batch_get(parts[1]))
            if route == ("POST", "batches", 3, "cancel"):
                return self._send_json(handler, 200, self._batch_cancel(parts[1]))
            if route == ("GET", "batches", 3, "results"):
                return self._batch_results(handler, parts[1])
            raise ApiError(404, "not_found", "Not found.")
        except ApiError as exc:
            self._send_json(handler, exc.status, _error(exc.code, exc.message, exc.field))

    def _send_json(self, handler, status: int, body, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("X-Request-ID", "fake-request-id")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    # --- Jobs -----------------------------------------------------------------------------------

    def _submit(self, handler, body: bytes) -> None:
        content_type = handler.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            fields, files = _multipart(content_type, body)
        elif content_type.startswith("application/json"):
            fields, files = json.loads(body), {}
        else:
            raise ApiError(415, "unsupported_media_type", f'Unsupported media type "{content_type}" in request.')
        if ("image" in files) == bool(fields.get("image_url")):
            raise ApiError(400, "required", "Give exactly one of image and image_url.", "image")
        if not fields.get("request_id"):
            raise ApiError(400, "required", "This field is required.", "request_id")
        labels = fields.get("labels")
        if labels is not None and not isinstance(labels, str):
            raise ApiError(400, "invalid", "Not a valid string.", "labels")
        for job in self.jobs.values():
            if job["request_id"] == fields["request_id"]:
                return self._send_json(handler, 200, _submitted(job))
        job_id = self.add_job(script=["processing", "completed"])
        job = self.jobs[job_id]
        job.update(request_id=fields["request_id"], image_url=fields.get("image_url"), labels=labels.split(",") if labels else None)
        job["upload"] = files.get("image")  # what arrived, for the tests (not part of the API)
        job["fields"] = fields
        if fields.get("callback_url"):
            job["callback"]["url"] = fields["callback_url"]
        self._send_json(handler, 202, _submitted(job), {"Location": job["status_url"]})

    def _job(self, job_id: str) -> dict:
        if job_id not in self.jobs:
            raise ApiError(404, "not_found", "No such job.")
        return self.jobs[job_id]

    def _job_get(self, job_id: str) -> dict:
        job = self._job(job_id)
        if self.script[job_id] and job["status"] not in TERMINAL:
            job["status"] = self.script[job_id].pop(0)
            if job["status"] == "completed":
                job.update(face_count=1, faces=[FACE], detection_count=1, detections=[{"label": "face", **FACE}], width=512, height=512)
            elif job["status"] in ("failed", "canceled", "expired"):
                job["error"] = {"code": {"failed": "detection_failed"}.get(job["status"], job["status"]), "message": "It ended."}
        return _public(job)

    def _job_cancel(self, job_id: str) -> dict:
        job = self._job(job_id)
        if job["status"] == "processing":
            raise ApiError(409, "job_already_started", "The job is already being processed.")
        if job["status"] in TERMINAL:
            raise ApiError(409, "job_finished", "The job has already ended.")
        job.update(status="canceled", error={"code": "canceled", "message": "Canceled by the client."})
        return _public(job)

    # --- Batches --------------------------------------------------------------------------------

    def _batch_submit(self, handler, body: bytes) -> None:
        data = json.loads(body)
        items = data.get("items")
        if not isinstance(items, list) or not items:
            raise ApiError(400, "required", "At least one item.", "items")
        for index, item in enumerate(items):
            for name in ("request_id", "image_url"):
                if not isinstance(item.get(name), str) or not item[name]:
                    raise ApiError(400, "required", "This field is required.", f"items[{index}].{name}")
            if not item["image_url"].startswith(("http://", "https://")):
                raise ApiError(400, "invalid", "Enter a valid URL.", f"items[{index}].image_url")
            if "labels" in item and not isinstance(item["labels"], list):
                raise ApiError(400, "not_a_list", 'Expected a list of items but got type "str".', f"items[{index}].labels")
        batch_id = str(uuid.uuid4())
        job_ids = []
        for item in items:
            job_id = self.add_job(script=["processing", "completed"], batch_id=batch_id, image_url=item["image_url"])
            self.jobs[job_id]["request_id"] = item["request_id"]
            job_ids.append(job_id)
        self.batches[batch_id] = {
            "id": batch_id,
            "jobs": job_ids,
            "canceled": False,
            "callback_url": data.get("callback_url"),
            "body": data,
        }
        self._send_json(
            handler,
            202,
            {
                "id": batch_id,
                "status_url": f"http://testserver/api/v1/batches/{batch_id}/",
                "results_url": f"http://testserver/api/v1/batches/{batch_id}/results/",
                "item_count": len(items),
                "status": "running",
            },
        )

    def _batch(self, batch_id: str) -> dict:
        if batch_id not in self.batches:
            raise ApiError(404, "not_found", "No such batch.")
        return self.batches[batch_id]

    def _batch_get(self, batch_id: str) -> dict:
        batch = self._batch(batch_id)
        jobs = [self._job_get(job_id) for job_id in batch["jobs"]]  # polling a batch moves its jobs on
        return self._batch_representation(batch, jobs)

    def _batch_representation(self, batch: dict, jobs: list[dict]) -> dict:
        counts: dict[str, int] = {}
        for job in jobs:
            counts[job["status"]] = counts.get(job["status"], 0) + 1
        status = "canceled" if batch["canceled"] else "completed" if all(j["status"] in TERMINAL for j in jobs) else "running"
        return {
            "id": batch["id"],
            "status": status,
            "item_count": len(jobs),
            "counts": counts,
            "created_at": "2026-12-03T06:00:00Z",
            "finished_at": "2026-12-03T06:01:00Z" if status != "running" else None,
            "callback_url": batch["callback_url"],
            "results_url": f"http://testserver/api/v1/batches/{batch['id']}/results/",
            "items": jobs,
            "next": None,
        }

    def _batch_cancel(self, batch_id: str) -> dict:
        batch = self._batch(batch_id)
        batch["canceled"] = True
        for job_id in batch["jobs"]:
            job = self.jobs[job_id]
            if job["status"] == "queued":
                job.update(status="canceled", error={"code": "canceled", "message": "Canceled by the client."})
        return self._batch_representation(batch, [_public(self.jobs[j]) for j in batch["jobs"]])

    def _batch_results(self, handler, batch_id: str) -> None:
        batch = self._batch(batch_id)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-ndjson")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for index, job_id in enumerate(batch["jobs"]):
            line = json.dumps(_public(self.jobs[job_id])).encode() + b"\n"
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            handler.wfile.flush()
            if index == 0 and not self.hold_results.wait(timeout=10):
                self.results_held_until_timeout = True
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()


def _error(code: str, message: str, field: str | None = None) -> dict:
    return {"error": {"code": code, "message": message, "field": field}}


def _public(job: dict) -> dict:
    return {k: v for k, v in job.items() if k not in ("upload", "fields")}


def _submitted(job: dict) -> dict:
    return {k: job[k] for k in ("id", "request_id", "status", "status_url", "created_at")}


def _multipart(content_type: str, body: bytes) -> tuple[dict, dict]:
    """The form fields and the files (name -> {filename, content_type, content}) of a multipart body."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields, files = {}, {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        content = part.get_payload(decode=True)
        if part.get_filename() is not None:
            files[name] = {"filename": part.get_filename(), "content_type": part.get_content_type(), "content": content}
        else:
            fields[name] = content.decode()
    return fields, files
