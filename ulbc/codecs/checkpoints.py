"""Weight files named inside a bitstream: how the learned codecs (CompressAI's, their adapters, GLC)
write which file they ran with, and how a decoder finds that file again and checks it.

A reference is a weights-registry name (``SOURCE_REGISTRY``) or an absolute file path
(``SOURCE_PATH``), stored as a varint length and UTF-8 text, next to the first ``WEIGHTS_ID_BYTES``
bytes of the file's sha256: a decoder with another file under that name refuses to decode.
"""

from __future__ import annotations

from pathlib import Path

from .. import bitstream, weights
from ..errors import BitstreamError, ConfigError

SOURCE_REGISTRY, SOURCE_PATH = 1, 2
WEIGHTS_ID_BYTES = 8
MAX_REFERENCE_BYTES = 4096


def local_file(reference: str, what: str = "checkpoint") -> tuple[int, str, Path, str]:
    """(source, reference as stored, local path, full sha256) of a registry name or a file path."""
    if reference in weights.registry():
        return SOURCE_REGISTRY, reference, weights.require(reference), weights.file_sha256(reference)
    path = Path(reference).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{what} {reference}: no such file")
    return SOURCE_PATH, str(path), path, weights.path_sha256(path)


def pack_reference(reference: str) -> bytes:
    encoded = reference.encode("utf-8")
    return bitstream.encode_varint(len(encoded)) + encoded


def weights_id(sha256: str) -> bytes:
    return bytes.fromhex(sha256)[:WEIGHTS_ID_BYTES]


def read_reference(params: bytes, pos: int, what: str = "checkpoint", *, following: int = 0) -> tuple[str, int]:
    """The reference at ``pos`` and the position after it; ``following`` bytes must come after it."""
    length, pos = bitstream.decode_varint(params, pos, f"{what} reference length")
    if length == 0 or length > MAX_REFERENCE_BYTES or pos + length + following > len(params):
        raise BitstreamError(f"{what} reference of {length} bytes does not fit the parameters")
    try:
        reference = params[pos : pos + length].decode("utf-8")
    except UnicodeDecodeError:
        raise BitstreamError(f"the {what} reference is not UTF-8") from None
    if not reference.isprintable():
        # A damaged byte can become a newline or escape; never echo it into an error message.
        raise BitstreamError(f"the {what} reference {reference!r} has non-printable characters")
    return reference, pos + length


def named_file(source: int, reference: str, file_id: str, what: str = "checkpoint") -> tuple[Path, str]:
    """The local file and full sha256 a bitstream names, its sha256 checked against ``file_id``
    (hex); a registered file that is missing gives the weights manager's one-line error."""
    if source == SOURCE_PATH:
        path = Path(reference)
        if not path.is_file():
            raise BitstreamError(f"made with {what} {path} (sha256 {file_id}...), which is not on this machine")
        sha256 = weights.path_sha256(path)
    else:
        if reference not in weights.registry():
            raise BitstreamError(f"made with {what} {reference!r}, which is not registered here "
                                 f"($ULBC_WEIGHTS_REGISTRY, ulbc weights list)")
        path, sha256 = weights.require(reference), weights.file_sha256(reference)
    if sha256[: 2 * WEIGHTS_ID_BYTES] != file_id:
        raise BitstreamError(f"made with {what} {reference} of sha256 {file_id}..., but {path} has sha256 {sha256}")
    return path, sha256
