"""Moved to callbacks/signing.py; this name stays for receivers that copied the import from
earlier READMEs (`from workers.signing import verify_webhook`)."""

from callbacks.signing import (  # noqa: F401
    WebhookVerificationError,
    sign,
    signed_headers,
    verify_webhook,
)
