"""pushsvc: real-time push over Server-Sent Events, fanned out through Redis pub/sub."""

__version__ = "0.1.0"
