"""Client side of Observatory: the producer API (ZeroMQ) and the Python WebSocket client."""

from clients.client import ObservatoryClient
from clients.curve import ClientKeys
from clients.producer import Producer

__all__ = ["ClientKeys", "ObservatoryClient", "Producer"]
