"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class PhotonError(Exception):
    """Base class of every user-facing error (bad config, data, checkpoint or request)."""


class ConfigError(PhotonError, ValueError):
    """An invalid configuration value; the message names the offending field."""


class CacheFullError(PhotonError, ValueError):
    """A write would go past the capacity a KV cache was built with."""


class InputError(PhotonError, ValueError):
    """Bad model or generation input: token ids outside the vocabulary, empty requests."""


class DataError(PhotonError, ValueError):
    """Missing, empty or unreadable training text, or a corpus that cannot be fetched."""


class TokenizerError(PhotonError, ValueError):
    """A missing or unreadable tokenizer, or an impossible tokenizer request."""


class CheckpointError(PhotonError, ValueError):
    """A missing, corrupt, truncated or mismatched checkpoint, or one that cannot be written."""


class DependencyError(PhotonError, ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""
