"""The shared kernel: what every domain app may use and nothing of the project's own it imports."""
