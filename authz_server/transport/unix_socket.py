"""Serving on a Unix domain socket: the sidecar layout, where the pod's own Envoy reaches the server through a
socket file on a volume both containers mount (mesh_manifests/overlays/sidecar).

gRPC binds `unix:/PATH` itself but refuses a path that exists, and a server that
crashed (or a container restarted in the same pod: the volume outlives it)
leaves its socket file behind. `clear_stale` removes such a leftover only when
nothing answers on it; a live socket or any other kind of file is refused with
the path named. The socket is created with the process umask (0755: only its
owner may connect), so `allow_group` opens it to the group, which in a pod is
the fsGroup both containers share.
"""

from __future__ import annotations

import os
import socket
import stat

from authz_server.config import UNIX_PREFIX

SOCKET_MODE = 0o660
"""Owner and group may connect (connecting to a Unix socket needs write permission); nobody else."""


def socket_path(listen: str) -> str | None:
    """The socket file a `listen` value names, or None for HOST:PORT."""
    return listen.removeprefix(UNIX_PREFIX) if listen.startswith(UNIX_PREFIX) else None


def clear_stale(path: str) -> None:
    """Remove a socket file nothing listens on; raise OSError naming the path when something else is there."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"listen: {path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)  # a leftover from a process that is gone
        return
    except OSError as exc:
        raise OSError(f"listen: cannot tell whether {path} is in use: {exc}") from exc
    finally:
        probe.close()
    raise OSError(f"listen: {path} is in use by another server")


def allow_group(path: str) -> None:
    os.chmod(path, SOCKET_MODE)
