"""Small network helpers shared by the learner, the servers and the tools."""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it). ``host=""`` asks on every interface: the
    learner's rendezvous port must be reachable from other nodes; servers bind 127.0.0.1."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
