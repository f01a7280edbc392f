# Written by hand: the models of this app moved to the domain apps (clients, registry, jobs,
# callbacks) with their tables unchanged. Here they leave the `api` state, and their content types
# are renamed, so admin log entries and per-model permissions keep pointing at them.

from django.db import migrations

MOVED = {
    "apiclient": "clients",
    "apikey": "clients",
    "detectorversion": "registry",
    "activedetector": "registry",
    "image": "jobs",
    "face": "jobs",
    "callbackdelivery": "callbacks",
    "callbackattempt": "callbacks",
}


def _rename_content_types(apps, schema_editor, *, forward: bool) -> None:
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model, app in MOVED.items():
        old, new = ("api", app) if forward else (app, "api")
        # A fresh database has neither yet (they are made after migrating); one that somehow has
        # both keeps the new one as it is.
        if not ContentType.objects.filter(app_label=new, model=model).exists():
            ContentType.objects.filter(app_label=old, model=model).update(app_label=new)


def forwards(apps, schema_editor):
    _rename_content_types(apps, schema_editor, forward=True)


def backwards(apps, schema_editor):
    _rename_content_types(apps, schema_editor, forward=False)


class Migration(migrations.Migration):

    dependencies = [
        ("api", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("clients", "0001_initial"),
        ("registry", "0001_initial"),
        ("jobs", "0001_initial"),
        ("callbacks", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                # Referring models first, so no state refers to a model already gone.
                migrations.DeleteModel(name="CallbackAttempt"),
                migrations.DeleteModel(name="CallbackDelivery"),
                migrations.DeleteModel(name="Face"),
                migrations.DeleteModel(name="Image"),
                migrations.DeleteModel(name="ApiKey"),
                migrations.DeleteModel(name="ApiClient"),
                migrations.DeleteModel(name="ActiveDetector"),
                migrations.DeleteModel(name="DetectorVersion"),
            ],
        ),
        migrations.RunPython(forwards, backwards),
    ]
