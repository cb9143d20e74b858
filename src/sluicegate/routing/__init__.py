"""Which deployment answers: the ordered targets of a model, retry timing, and the circuit breaker."""
