"""Consumers: read events from the bus, do their side effects, then commit."""
