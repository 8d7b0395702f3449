"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class PhotonError(Exception):
    """Base class of every user-facing error (bad config, data, checkpoint or request)."""


class ConfigError(PhotonError, ValueError):
    """An invalid configuration value; the message names the offending field."""


class CacheFullError(PhotonError, ValueError):
    """A write would go past the capacity a KV cache was built with."""


class InputError(PhotonError, ValueError):
    """Bad model or generation input: token ids outside the vocabulary, empty requests."""
