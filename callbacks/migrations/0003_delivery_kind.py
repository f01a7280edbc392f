"""Deliveries that belong to no job (rollout alerts): the job link becomes optional, and a
delivery says what kind it is. Existing rows are callbacks of their jobs, as before."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("callbacks", "0002_delivery_hosts"), ("jobs", "0001_initial")]

    operations = [
        migrations.AlterField(
            model_name="callbackdelivery",
            name="image",
            field=models.ForeignKey(
                blank=True, null=True, on_delete=django.db.models.deletion.CASCADE, related_name="deliveries", to="jobs.image"
            ),
        ),
        migrations.AddField(
            model_name="callbackdelivery",
            name="kind",
            field=models.CharField(choices=[("callback", "Callback"), ("alert", "Alert")], default="callback", max_length=16),
        ),
        migrations.AddField(
            model_name="callbackdelivery",
            name="subject",
            field=models.CharField(blank=True, default="", max_length=200),
        ),
    ]
