# Written by hand: the model moved here from the `api` app, keeping its table (api_detectorversion, api_activedetector).
# An existing database already has the table (made by api 0001), a fresh one gets it from there:
# either way this migration changes only Django's state, never the database.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('api', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='DetectorVersion',
                    fields=[
                        ('id', models.CharField(max_length=64, primary_key=True, serialize=False)),
                        ('name', models.CharField(max_length=32)),
                        ('version', models.CharField(max_length=32)),
                        ('implementation', models.CharField(max_length=32)),
                        ('weights', models.JSONField(default=list)),
                        ('packages', models.JSONField(default=dict)),
                        ('settings', models.JSONField(default=dict)),
                        ('settings_hash', models.CharField(max_length=64)),
                        ('code_commit', models.CharField(blank=True, max_length=64)),
                        ('notes', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('retired_at', models.DateTimeField(blank=True, null=True)),
                    ],
                    options={
                        'db_table': 'api_detectorversion',
                        'ordering': ['name', 'created_at'],
                    },
                ),
                migrations.CreateModel(
                    name='ActiveDetector',
                    fields=[
                        ('id', models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('version', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, to='registry.detectorversion')),
                    ],
                    options={
                        'db_table': 'api_activedetector',
                    },
                ),
            ],
        ),
    ]
