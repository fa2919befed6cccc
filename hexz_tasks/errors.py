"""Kinds of failure that several modules raise, one exception type each (importable
without torch, for the command line). Bad arguments and bad input are ValueError;
an engine bug is RuntimeError and running out of memory MemoryError (the Cython
bindings translate C++ exceptions that way)."""


class ModelError(Exception):
    """A model cannot be loaded or built: a corrupt or foreign file, or parameters that
    name no architecture. Not the caller's bad arguments: the model itself is wrong."""


class FormatError(ValueError):
    """Stored examples that cannot be read: corrupt, or of an unknown format version."""
