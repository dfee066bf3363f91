"""The listener (client sessions over a socket) and its Python client."""

from .client import AsyncSession, CallError, Session, connect, connect_async

__all__ = ["AsyncSession", "CallError", "Session", "connect", "connect_async"]
