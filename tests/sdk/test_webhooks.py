"""verify_callback (sdk/python) accepts what the service signs (callbacks/signing.py, the very
code the outbox uses) and refuses anything else."""

import json
import time

import pytest
from face_detect_client import CallbackVerificationError, Job, verify_callback

from callbacks.signing import sign, signed_headers

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
OTHER_SECRET = "whsec_c2VjcmV0LW9mLXNvbWVib2R5LWVsc2UtMzJieXRlcw=="
BODY = json.dumps({"id": "0b0c6a5e-4a57-4ac4-9d4e-1f5f3c1b2a10", "status": "completed", "face_count": 1, "faces": []}).encode()


def test_a_callback_signed_by_the_service_is_verified_and_parsed():
    """The service's own headers verify with the standardwebhooks library; the body comes back parsed."""
    payload = verify_callback(SECRET, signed_headers(SECRET, "msg_1", BODY), BODY)
    assert payload == json.loads(BODY)
    assert Job.from_json(payload).status == "completed"


def test_header_names_are_matched_in_any_case():
    headers = {name.title(): value for name, value in signed_headers(SECRET, "msg_1", BODY).items()}
    assert verify_callback(SECRET, headers, BODY)["face_count"] == 1


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h, b: (h, b.replace(b'"face_count": 1', b'"face_count": 2')), id="body changed"),
        pytest.param(lambda h, b: ({**h, "webhook-id": "msg_2"}, b), id="another webhook id"),
        pytest.param(lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b), id="timestamp changed"),
        pytest.param(lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), id="no signature"),
        pytest.param(lambda h, b: ({**h, "webhook-signature": "garbage"}, b), id="malformed signature"),
        pytest.param(lambda h, b: (h, b"\xff\xfe" + b), id="body not UTF-8"),
    ],
)
def test_a_tampered_callback_is_refused(tamper):
    headers, body = tamper(signed_headers(SECRET, "msg_1", BODY), BODY)
    with pytest.raises(CallbackVerificationError):
        verify_callback(SECRET, headers, body)


def test_another_secret_does_not_verify():
    with pytest.raises(CallbackVerificationError):
        verify_callback(OTHER_SECRET, signed_headers(SECRET, "msg_1", BODY), BODY)


def test_a_callback_older_than_five_minutes_is_refused():
    """A replay: the right signature over an old timestamp."""
    with pytest.raises(CallbackVerificationError, match="too old"):
        verify_callback(SECRET, signed_headers(SECRET, "msg_1", BODY, timestamp=int(time.time()) - 301), BODY)


def test_one_valid_signature_among_several_is_enough():
    """During a secret rotation the header lists several signatures, space-separated."""
    headers = signed_headers(SECRET, "msg_1", BODY)
    timestamp = int(headers["webhook-timestamp"])
    headers["webhook-signature"] = f"{sign(OTHER_SECRET, 'msg_1', timestamp, BODY)} {headers['webhook-signature']}"
    assert verify_callback(SECRET, headers, BODY)["id"] == json.loads(BODY)["id"]


def test_a_malformed_secret_is_the_receivers_configuration_error():
    """Not a CallbackVerificationError: the sender did nothing wrong."""
    with pytest.raises(ValueError):
        verify_callback("whsec_not*base64!", signed_headers(SECRET, "msg_1", BODY), BODY)
