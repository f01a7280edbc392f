"""The admin's index links to the dashboard (staff reach it from where they log in)."""

from django.contrib import admin

admin.site.index_template = "dashboard/admin_index.html"
