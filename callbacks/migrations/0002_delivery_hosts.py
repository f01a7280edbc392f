from urllib.parse import urlsplit

from django.db import migrations, models


def host_of(url: str) -> str:
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        port = 0
    return f"{(parts.hostname or '').lower()}:{port}"


def fill_hosts(apps, schema_editor):
    Delivery = apps.get_model("callbacks", "CallbackDelivery")
    Host = apps.get_model("callbacks", "CallbackHost")
    for delivery in Delivery.objects.filter(host="").only("id", "url").iterator():
        host = host_of(delivery.url)
        Delivery.objects.filter(id=delivery.id).update(host=host)
        Host.objects.get_or_create(host=host)


class Migration(migrations.Migration):
    dependencies = [("callbacks", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="callbackdelivery",
            name="host",
            field=models.CharField(blank=True, db_index=True, default="", max_length=300),
        ),
        migrations.AddField(
            model_name="callbackdelivery",
            name="sending_until",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddIndex(
            model_name="callbackdelivery",
            index=models.Index(fields=["host", "status", "next_attempt_at"], name="delivery_host_due"),
        ),
        migrations.CreateModel(
            name="CallbackHost",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("host", models.CharField(max_length=300, unique=True)),
                ("consecutive_failures", models.PositiveIntegerField(default=0)),
                ("open_until", models.DateTimeField(blank=True, null=True)),
                ("opened_count", models.PositiveIntegerField(default=0)),
                ("last_error", models.TextField(blank=True)),
                ("last_claimed_at", models.DateTimeField(blank=True, db_index=True, null=True)),
                ("updated_at", models.DateTimeField(auto_now=True)),
            ],
            options={"ordering": ["host"]},
        ),
        migrations.RunPython(fill_hosts, migrations.RunPython.noop),
    ]
