# Written by hand: the model moved here from the `api` app, keeping its table (api_callbackdelivery, api_callbackattempt).
# An existing database already has the table (made by api 0001), a fresh one gets it from there:
# either way this migration changes only Django's state, never the database.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ('jobs', '0001_initial'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name='CallbackDelivery',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('webhook_id', models.CharField(max_length=64, unique=True)),
                        ('url', models.URLField(max_length=2048)),
                        ('body', models.TextField()),
                        ('status', models.CharField(choices=[('pending', 'Pending'), ('delivered', 'Delivered'), ('failed', 'Failed')], db_index=True, default='pending', max_length=16)),
                        ('attempt_count', models.PositiveIntegerField(default=0)),
                        ('next_attempt_at', models.DateTimeField(blank=True, db_index=True, null=True)),
                        ('last_status_code', models.PositiveIntegerField(blank=True, null=True)),
                        ('last_error', models.TextField(blank=True)),
                        ('created_at', models.DateTimeField(auto_now_add=True)),
                        ('finished_at', models.DateTimeField(blank=True, null=True)),
                        ('image', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='deliveries', to='jobs.image')),
                    ],
                    options={
                        'db_table': 'api_callbackdelivery',
                        'verbose_name_plural': 'callback deliveries',
                        'ordering': ['-created_at', '-id'],
                    },
                ),
                migrations.CreateModel(
                    name='CallbackAttempt',
                    fields=[
                        ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                        ('number', models.PositiveIntegerField()),
                        ('started_at', models.DateTimeField()),
                        ('duration_ms', models.PositiveIntegerField()),
                        ('status_code', models.PositiveIntegerField(blank=True, null=True)),
                        ('response_excerpt', models.TextField(blank=True)),
                        ('error', models.TextField(blank=True)),
                        ('delivery', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='attempts', to='callbacks.callbackdelivery')),
                    ],
                    options={
                        'db_table': 'api_callbackattempt',
                        'ordering': ['delivery', 'number'],
                        'constraints': [models.UniqueConstraint(fields=('delivery', 'number'), name='attempt_unique_number')],
                    },
                ),
            ],
        ),
    ]
