"""SEPs: execution processes that run one task at a time, and the program API."""

from .conversation import SessionEnded
from .program import AppError, GiveUp, ProgramDef, RetryLater, load_app, program

__all__ = [
    "AppError",
    "GiveUp",
    "ProgramDef",
    "RetryLater",
    "SessionEnded",
    "load_app",
    "program",
]
