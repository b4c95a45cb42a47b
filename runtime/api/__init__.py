"""The embedded API: ``open_runtime`` assembles the parts, ``Runtime`` is what a program calls."""
