import cProfile, pstats, io, time
import pytest
from callbacks import services as outbox
from callbacks.http import post_signed
from callbacks.models import CallbackHost
from jobs import services
from jobs.models import Image
from tests.conftest import photo_bytes, upload


@pytest.mark.django_db(transaction=True)
def test_profile(api_client, s3, monkeypatch, stub_detector, receiver, settings):
    data = photo_bytes("astronaut_1face.png")
    ids = []
    monkeypatch.setattr("jobs.services.submission._publish_chain", lambda image_id, **r: None)
    up = cProfile.Profile()
    for i in range(60):
        up.enable()
        body = upload(api_client, data, request_id=f"p{i}", callback_url=receiver.url()).json()
        up.disable()
        ids.append(body["id"])
    det = cProfile.Profile(); rest = cProfile.Profile()
    for i, jid in enumerate(ids):
        det.enable()
        services.image_job_detect(image_id=jid)
        det.disable()
        rest.enable()
        done, claim = services.image_job_callback_handoff(image_id=jid)
        result = post_signed(claim.url, claim.body, webhook_id=claim.webhook_id, check_policy=claim.check_policy)
        outbox.callback_delivery_record(claim=claim, result=result)
        rest.disable()
    for name, p in (("upload", up), ("detect", det), ("deliver", rest)):
        s = io.StringIO()
        st = pstats.Stats(p, stream=s); st.sort_stats("cumulative").print_stats(45)
        print("=====", name); print(s.getvalue()[:9000])
