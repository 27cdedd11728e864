"""The calls: clients, faults, failover, the exchange, the limiter, SSE."""
