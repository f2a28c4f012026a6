"""Request framing: how many bytes a request is, decided once, before its body is read.

Shared by the model server's REST loop and the log receiver, so that both refuse the same
Content-Length values (negative, signed, conflicting, over the limit) the same way.
"""

from __future__ import annotations


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def declared_length(values: list[str], limit: int) -> int | None:
    """The body length a request's Content-Length header(s) declare (None: no header).

    HttpError 400 for anything but a non-negative decimal integer (`-1`, `+5`, `5.0`, `0x10`,
    non-ASCII digits) or for conflicting values; 413 above `limit`.
    """
    if not values:
        return None
    found = set()
    for value in values:
        for part in value.split(","):  # a proxy may join repeated headers with commas
            text = part.strip(" \t")
            if not (text.isascii() and text.isdigit()):
                raise HttpError(400, f"bad Content-Length {value[:40]!r}: expected a "
                                     "non-negative integer")
            found.add(text.lstrip("0") or "0")
    if len(found) > 1:
        raise HttpError(400, f"conflicting Content-Length values {sorted(found)[:4]}")
    (text,) = found
    if len(text) > 18 or int(text) > limit:
        raise HttpError(413, f"request body of {text[:40]} bytes is larger than the limit of "
                             f"{limit} bytes")
    return int(text)


def frame(head: bytes, limit: int) -> int | None:
    """The body length of a request whose head (request line + headers) is `head`."""
    lengths = []
    for line in head.decode("iso-8859-1").split("\n")[1:]:
        name, colon, value = line.partition(":")
        key = name.strip().lower()
        if not colon or key not in ("content-length", "transfer-encoding"):
            continue
        if name != name.strip():
            raise HttpError(400, f"malformed header {name.strip()!r} (whitespace before ':')")
        if key == "transfer-encoding":
            raise HttpError(411, "Transfer-Encoding is not supported: send the body with a "
                                 "Content-Length")
        lengths.append(value.strip(" \t\r"))
    return declared_length(lengths, limit)
