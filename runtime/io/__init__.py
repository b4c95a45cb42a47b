"""Everything that touches the network on behalf of a step: attempts with their timeouts and
backoff, the call-service (HTTP and gRPC) executors, a loop's iterations, approval
notifications, child executions of ``run-runbook`` steps, and tracing spans.
"""
