"""Make sure 127.0.0.1 works before the demo puts everything on it.

A fresh network namespace (``unshare -n``, some sandboxes and containers run with
``--network none``) has its loopback interface down: sockets bind, but nothing connects. The
demo needs loopback only, so where the process may (root, or root in its own namespace) it
brings ``lo`` up itself; that namespace is private to the process tree and holds nothing else.
"""

from __future__ import annotations

import fcntl
import socket
import struct

# Linux ioctl numbers (linux/sockios.h) and the interface flag (linux/if.h).
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
_IFREQ = "16sh22x"  # struct ifreq: name, flags, padding to its 40 bytes


class LoopbackDown(Exception):
    """127.0.0.1 cannot be reached and could not be brought up."""


def works() -> bool:
    """Whether a TCP connection to a socket listening on 127.0.0.1 succeeds."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        try:
            with socket.create_connection(server.getsockname(), timeout=1.0):
                return True
        except OSError:
            return False


def bring_up(interface: str = "lo") -> None:
    """Set the interface's UP flag (as ``ip link set lo up`` does); OSError if not allowed."""
    name = interface.encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        current = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack(_IFREQ, name, 0))
        flags = struct.unpack(_IFREQ, current)[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack(_IFREQ, name, flags | IFF_UP))


def ensure() -> bool:
    """Make loopback usable; True if it had to be brought up. Raises :class:`LoopbackDown`."""
    if works():
        return False
    try:
        bring_up()
    except OSError as exc:
        raise LoopbackDown(
            f"127.0.0.1 is unreachable (loopback down?) and bringing it up failed: {exc}; "
            "run `ip link set lo up`"
        ) from exc
    if not works():
        raise LoopbackDown("127.0.0.1 is unreachable even with the loopback interface up")
    return True
