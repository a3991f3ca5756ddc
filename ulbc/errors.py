"""Error types. Every message is one line that names the file (or URL, or config key) and the problem."""


class UlbcError(Exception):
    """Base class for errors that the CLI prints as a single line and exits with status 2."""


class InputError(UlbcError):
    """An input image, video or file cannot be used as it is."""


class BitstreamError(UlbcError):
    """A bitstream file is truncated, corrupted or of an unknown format."""


class EncodeError(UlbcError):
    """A codec failed to encode an item (the encoder library or tool reported an error)."""


class ConfigError(UlbcError):
    """The study configuration is invalid (unknown codec, dataset, bad value)."""


class ToolMissingError(UlbcError):
    """An external tool (ffmpeg) or optional library needed by a codec is not installed."""


class DownloadError(UlbcError):
    """A download failed (HTTP error, checksum mismatch, unsafe archive)."""
