"""Policies that keep what a runbook may reach and reveal within bounds: the outbound host
allowlist, and secrets with the one redactor every way out passes through.
"""
