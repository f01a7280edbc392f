"""The staff dashboard (/dashboard/): figures per detector version, drawn on the server."""
