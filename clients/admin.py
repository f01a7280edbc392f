from django.contrib import admin, messages

from core.admin import ReadOnlyInline

from .models import ApiClient, ApiKey
from .services import api_keys_revoke_all


class ApiKeyInline(ReadOnlyInline):
    # Keys are made with `manage.py create_api_key`, which shows the key once.
    model = ApiKey
    fields = ("prefix", "created_at", "last_used_at", "revoked_at")


@admin.register(ApiClient)
class ApiClientAdmin(admin.ModelAdmin):
    list_display = ("name", "is_active", "created_at")
    search_fields = ("name", "keys__prefix")
    inlines = [ApiKeyInline]
    actions = ["revoke_all_keys"]

    @admin.action(description="Revoke all keys of the selected clients")
    def revoke_all_keys(self, request, queryset):
        count = api_keys_revoke_all(clients=queryset)
        self.message_user(request, f"{count} key(s) revoked.", messages.SUCCESS)
