"""API clients and their keys."""

from django.db import models


class ApiClient(models.Model):
    """A customer of the API. Its jobs are its own: no other client can see them."""

    name = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    is_active = models.BooleanField(default=True)
    # Operators manage rollouts (create_api_key NAME --operator); clients only submit and read.
    is_operator = models.BooleanField(default=False)

    # DRF's permission checks read request.user.is_authenticated; an authenticated request's
    # user is the client.
    is_authenticated = True

    class Meta:
        db_table = "api_apiclient"  # the table it had before the split into apps

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    """A key of a client. Only a SHA-256 of the key is stored (keys are 190+ random bits, so a
    fast hash is enough); the prefix finds the row and is safe to show."""

    client = models.ForeignKey(ApiClient, on_delete=models.CASCADE, related_name="keys")
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "api_apikey"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.client})"
