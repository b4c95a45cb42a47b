"""Executions that start themselves: schedules and event rules of the latest runbook versions."""
