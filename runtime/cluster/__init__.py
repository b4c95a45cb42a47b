"""Several processes on one database: this process's instance and leases, takeover, and
commands forwarded to the process that owns an execution.
"""
