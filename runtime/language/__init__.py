"""The runbook expression language: ``${...}`` templates, conditions and input schemas.

Pure functions over plain values; every layer above may use them.
"""
