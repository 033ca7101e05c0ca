"""Operations: Prometheus metrics, the Kafka probe, the ops snapshot and the overdue sweep."""
