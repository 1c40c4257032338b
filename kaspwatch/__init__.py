"""kaspwatch: find machines still running Kaspersky software from what they say on the network."""

__version__ = "0.1.0"
