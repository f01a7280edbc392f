"""Verifying the service's callbacks, with the official Standard Webhooks library.

The service signs each callback per Standard Webhooks (https://www.standardwebhooks.com/):
headers ``webhook-id``, ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed with the base64 part of the
``whsec_...`` secret; several space-separated during a secret rotation). That is exactly what
``standardwebhooks.Webhook.verify`` checks, with its fixed five-minute tolerance on the timestamp.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from .errors import CallbackVerificationError


def verify_callback(secret: str, headers: Mapping[str, str], body: bytes | str) -> dict[str, Any]:
    """The callback's JSON body, once its signature is verified; CallbackVerificationError
    otherwise (a wrong signature, a timestamp over five minutes away, missing headers).

    ``secret``: the service's CALLBACK_SIGNING_SECRET (``whsec_...``); ``headers``: the request's
    headers, any case (a dict, Django's ``request.headers``, Flask's, httpx's); ``body``: the raw
    bytes received, before any JSON parsing. A job's callback is a job (``Job.from_json``); a
    batch's has ``"type": "batch.completed"``.
    """
    # A malformed secret is the receiver's configuration error: raised as it is (ValueError).
    webhook = Webhook(secret)
    try:
        payload = webhook.verify(body, {name: value for name, value in headers.items()})
    except WebhookVerificationError as exc:
        raise CallbackVerificationError(str(exc)) from exc
    except ValueError as exc:
        # The library raises plain ValueErrors for some malformed input (a signature without its
        # "v1," prefix, bad base64, a body that is not UTF-8 or not JSON): still an invalid callback.
        raise CallbackVerificationError(f"malformed callback: {exc}") from exc
    if not isinstance(payload, dict):
        raise CallbackVerificationError("the callback's body is not a JSON object")
    return payload
