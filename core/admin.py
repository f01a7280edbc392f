"""Admin base classes shared by the domain apps' admins."""

from django.contrib import admin
from django.db import models


class ReadOnlyInline(admin.TabularInline):
    """Rows that the API, the workers or a management command make; the admin only shows them."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows made elsewhere (see ReadOnlyInline): viewed and acted on, never added or edited."""

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        # A URL field's form (built for the view page, never submitted here) takes Django 6's
        # default scheme now, instead of warning on every page that the default will change.
        if isinstance(db_field, models.URLField):
            kwargs.setdefault("assume_scheme", "https")
        return super().formfield_for_dbfield(db_field, request, **kwargs)
