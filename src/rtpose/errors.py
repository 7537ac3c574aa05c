"""Exceptions that carry a message meant for the user.

Every error that reaches the CLI is one of these; the CLI prints its message for the failing item and
goes on with the next one.
"""


class RtposeError(Exception):
    """Base class: the message is shown to the user as it is."""


class ImageDecodeError(RtposeError):
    """An input image is missing, unreadable, corrupt or of a shape we cannot use."""


class ModelNotFoundError(RtposeError):
    """A model name is unknown or its weights cannot be found anywhere."""


class WeightsError(RtposeError):
    """A weight file is corrupt, truncated, of the wrong checksum or does not fit the model."""


class EngineError(RtposeError):
    """An inference backend cannot be created or run."""
