"""The wire format between a plugin shim and the node daemon: length-prefixed binary frames.

Standard library only and no imports at all: the shim (``podnet.daemon.shim``) uses these
functions on its hot path, where every import costs start-up time (``json`` alone costs more
than the whole exchange). A frame is::

    magic (4 bytes) | body length (u32, big-endian) | body
    body = field count (u32) | (field length (u32) | field bytes) * count

A request (magic ``PNQ1``) has the fields ``plugin name, stdin, KEY=VALUE, KEY=VALUE, ...``:
the plugin's stdin as raw bytes and its environment as raw bytes, exactly as the shim got them
(no decoding, no JSON). A response (magic ``PNA1``) has ``kind, exit code, stdout, stderr``:
``kind`` is ``ran`` when the plugin ran (its exit code and output follow) or ``refused`` when the
daemon did not run anything (wrong peer, malformed or oversized request, unknown plugin, shutting
down); a refused request is always safe to run in-process instead, and the shim does so.

Lengths are checked against the limits before anything is read, so a hostile or broken peer can
make the reader allocate at most ``max_body`` bytes.
"""

# No ``from __future__ import annotations`` here or in the shim: every annotation is a builtin
# type, and the import would cost the shim one more module load.

DEFAULT_SOCKET = "/run/podnet/podnet.sock"
# The network config key that names the daemon's socket (it wins over PODNET_SOCKET): a config
# reaches every call of a network, an environment variable does not (podman's cleanup process
# runs with a bare environment).
SOCKET_KEY = "podnetSocket"
# The longest socket path: sockaddr_un.sun_path holds 108 bytes with the terminating NUL.
SUN_PATH_MAX = 107
REQUEST_MAGIC = b"PNQ1"
RESPONSE_MAGIC = b"PNA1"
HEADER_SIZE = 8
# The skel refuses stdin over 4 MiB; env is bounded separately. Anything bigger is refused unread.
MAX_STDIN = 4 * 1024 * 1024
MAX_ENV_BYTES = 1024 * 1024
MAX_FIELDS = 4096
MAX_REQUEST_BODY = MAX_STDIN + MAX_ENV_BYTES + 8 * (MAX_FIELDS + 3)
MAX_RESPONSE_BODY = 16 * 1024 * 1024

# A request naming this instead of a plugin asks the daemon for its status (``podnet status``).
STATUS_REQUEST = "podnet-daemon-status"
KIND_RAN = b"ran"
KIND_REFUSED = b"refused"


class ProtocolError(Exception):
    """A frame that is malformed, truncated, oversized or of the wrong kind."""


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def pack(magic: bytes, fields: list[bytes]) -> bytes:
    parts = [_u32(len(fields))]
    for f in fields:
        parts.append(_u32(len(f)))
        parts.append(f)
    body = b"".join(parts)
    return magic + _u32(len(body)) + body


def parse_header(header: bytes, magic: bytes, max_body: int) -> int:
    """The body length announced by a frame header; ProtocolError if the frame is not acceptable."""
    if len(header) != HEADER_SIZE:
        raise ProtocolError("truncated frame header")
    if header[:4] != magic:
        raise ProtocolError(f"bad frame magic {header[:4]!r} (expected {magic!r})")
    size = int.from_bytes(header[4:8], "big")
    if size > max_body:
        raise ProtocolError(f"frame body of {size} bytes is over the limit of {max_body}")
    return size


def unpack_fields(body: bytes, max_fields: int = MAX_FIELDS + 2) -> list[bytes]:
    if len(body) < 4:
        raise ProtocolError("frame body too short")
    count = int.from_bytes(body[:4], "big")
    if count > max_fields:
        raise ProtocolError(f"{count} fields is over the limit of {max_fields}")
    fields = []
    pos = 4
    end = len(body)
    for i in range(count):
        if pos + 4 > end:
            raise ProtocolError(f"field {i}: truncated length")
        n = int.from_bytes(body[pos:pos + 4], "big")
        pos += 4
        if n > end - pos:
            raise ProtocolError(f"field {i}: length {n} runs past the end of the frame")
        fields.append(body[pos:pos + n])
        pos += n
    if pos != end:
        raise ProtocolError(f"{end - pos} stray bytes after the last field")
    return fields


def encode_request(plugin: bytes, stdin: bytes, env: list[bytes]) -> bytes:
    return pack(REQUEST_MAGIC, [plugin, stdin, *env])


def decode_request(body: bytes) -> tuple[bytes, bytes, list[bytes]]:
    """``(plugin name, stdin, env entries)`` from a request body (header already checked)."""
    fields = unpack_fields(body)
    if len(fields) < 2:
        raise ProtocolError("request needs a plugin name and stdin")
    plugin, stdin, env = fields[0], fields[1], fields[2:]
    if len(stdin) > MAX_STDIN:
        raise ProtocolError(f"stdin of {len(stdin)} bytes is over the limit of {MAX_STDIN}")
    if sum(len(e) for e in env) > MAX_ENV_BYTES:
        raise ProtocolError(f"environment is over the limit of {MAX_ENV_BYTES} bytes")
    for i, entry in enumerate(env):
        if b"=" not in entry[1:] or b"\0" in entry:
            raise ProtocolError(f"environment entry {i} is not KEY=VALUE")
    return plugin, stdin, env


def encode_response(kind: bytes, code: int, stdout: bytes, stderr: bytes) -> bytes:
    return pack(RESPONSE_MAGIC, [kind, str(code).encode(), stdout, stderr])


def decode_response(body: bytes) -> tuple[bytes, int, bytes, bytes]:
    """``(kind, exit code, stdout, stderr)`` from a response body."""
    fields = unpack_fields(body, 4)
    if len(fields) != 4 or fields[0] not in (KIND_RAN, KIND_REFUSED):
        raise ProtocolError("response is not kind, code, stdout, stderr")
    code = fields[1]
    if len(code) > 4 or not code.removeprefix(b"-").isdigit():  # isdigit: ASCII digits, not empty
        raise ProtocolError(f"response exit code {code!r} is not a number")
    return fields[0], int(code), fields[2], fields[3]
