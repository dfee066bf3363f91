"""SEPs: execution processes that run one task at a time, and the program API."""

from .conversation import SessionEnded
from .program import AppError, ProgramDef, load_app, program

__all__ = ["AppError", "ProgramDef", "SessionEnded", "load_app", "program"]
