"""The sensor: capture -> decode -> match -> events."""
