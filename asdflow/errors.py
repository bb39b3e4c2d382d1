"""The error types of asdflow.

Every error the package raises on bad input derives from :class:`AsdflowError`,
so a caller can catch one class. Messages name the file or value that was
wrong and say what to do about it.
"""


class AsdflowError(Exception):
    """Base class of every asdflow error."""


class ParameterError(AsdflowError, ValueError):
    """A bad argument: a value out of range, of the wrong type, or a path that cannot be used.

    It is also a :class:`ValueError`, so code that catches ``ValueError`` for
    bad arguments keeps working.
    """


class LayoutError(AsdflowError):
    """A data folder does not follow the DCASE layout (missing root, machine or split)."""


class AudioError(AsdflowError):
    """An audio file cannot be used: unreadable, empty, too short or non-finite."""


class DownloadError(AsdflowError):
    """A download or an extraction failed its integrity or safety checks."""


class ModelError(AsdflowError):
    """A detector cannot be trained, loaded or used (bad file, version, non-finite loss)."""


class BusyError(AsdflowError):
    """Another asdflow process is writing into the same folder (a run, a cache or a data folder)."""


class SubmissionError(AsdflowError):
    """A DCASE score or decision file is malformed or does not match the ground truth."""
