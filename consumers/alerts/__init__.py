"""Alerts: the engine decides (one per host, category and stage per window), the delivery
sends to every sink and records, the state keeps windows and deliveries across restarts."""
