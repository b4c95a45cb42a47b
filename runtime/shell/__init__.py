"""The actor shell around the pure core: the execution actor, the directory of executions
this process runs, the persistence actor (group commit), timers, the event router and
retained events, watchers, the runbook catalog, the step-type registry and settings.
"""
