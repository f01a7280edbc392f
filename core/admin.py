"""Admin base classes shared by the domain apps' admins."""

from django.contrib import admin


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
