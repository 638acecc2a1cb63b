"""Errors that end a command with a clear message (no traceback). Kept free of heavy imports so
that the CLI can catch them without importing the LLM client."""


class LLMFatalError(RuntimeError):
    """An error retrying cannot fix (bad key, bad request, unknown model)."""


class ServerError(RuntimeError):
    """The embedded model server could not be started."""


class BooksError(RuntimeError):
    """Records went missing between stages (a bug, never the input's fault): the message names
    the stage whose books do not balance."""
