"""Runbook documents as written: the whole-document validation (ids, dependencies, cycles,
templates, limits; each kind checks its own config) and the ``triggers:`` section.
"""
