# Written by hand: the model moved here from the `api` app, keeping its table (api_image, api_face).
# An existing database already has the table (made by api 0001), a fresh one gets it from there:
# either way this migration changes only Django's state, never the database.

import uuid

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('api', '0001_initial'),
        ('clients', '0001_initial'),
        ('registry', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='Image',
                    fields=[
                        ('id', models.UUIDField(default=uuid.uuid4, editable=False, primary_key=True, serialize=False)),
                        ('request_id', models.CharField(db_index=True, max_length=128)),
                        ('callback_url', models.URLField(blank=True, max_length=2048)),
                        ('original_filename', models.CharField(blank=True, max_length=255)),
                        ('original_key', models.CharField(max_length=512)),
                        ('original_content_type', models.CharField(max_length=64)),
                        ('original_size', models.PositiveBigIntegerField()),
                        ('original_sha256', models.CharField(max_length=64)),
                        ('annotated_key', models.CharField(blank=True, max_length=512)),
                        ('status', models.CharField(choices=[('queued', 'Queued'), ('processing', 'Processing'), ('completed', 'Completed'), ('failed', 'Failed')], db_index=True, default='queued', max_length=16)),
                        ('error_code', models.CharField(blank=True, max_length=64)),
                        ('error_message', models.TextField(blank=True)),
                        ('attempts', models.PositiveIntegerField(default=0)),
                        ('enqueued_at', models.DateTimeField(blank=True, null=True)),
                        ('enqueue_count', models.PositiveIntegerField(default=0)),
                        ('model_version', models.CharField(blank=True, db_index=True, max_length=128)),
                        ('width', models.PositiveIntegerField(blank=True, null=True)),
                        ('height', models.PositiveIntegerField(blank=True, null=True)),
                        ('face_count', models.PositiveIntegerField(blank=True, null=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True, db_index=True)),
                        ('started_at', models.DateTimeField(blank=True, null=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('updated_at', models.DateTimeField(auto_now=True)),
                        ('client', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='images', to='clients.apiclient')),
                        ('detector_version', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='images', to='registry.detectorversion')),
                    ],
                    options={
                        'db_table': 'api_image',
                        'indexes': [models.Index(fields=['status', 'created_at'], name='api_image_status_13103c_idx')],
                        'constraints': [models.UniqueConstraint(fields=('client', 'request_id'), name='image_unique_client_request_id')],
                        'ordering': ['-created_at'],
                    },
                ),
                migrations.CreateModel(
                    name='Face',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('index', models.PositiveSmallIntegerField()),
                        ('box_x', models.PositiveIntegerField()),
                        ('box_y', models.PositiveIntegerField()),
                        ('box_width', models.PositiveIntegerField()),
                        ('box_height', models.PositiveIntegerField()),
                        ('confidence', models.FloatField()),
                        ('landmarks', models.JSONField(default=dict)),
                        ('detector_version', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='registry.detectorversion')),
                        ('image', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='faces', to='jobs.image')),
                    ],
                    options={
                        'db_table': 'api_face',
                        'constraints': [models.UniqueConstraint(fields=('image', 'index'), name='face_unique_index_per_image')],
                        'ordering': ['image', 'index'],
                    },
                ),
            ],
        ),
    ]
