"""Client side of Observatory: the producer API (ZeroMQ) and the Python WebSocket client."""

from clients.client import ObservatoryClient
from clients.producer import Producer

__all__ = ["ObservatoryClient", "Producer"]
