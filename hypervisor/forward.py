"""Serve a host unix socket whose every connection is relayed over its own SSH channel.

This is the engine-socket data path: `docker` connects to the host socket, each connection gets a
fresh `direct-streamlocal` channel to the guest's /var/run/docker.sock, and bytes are relayed
exactly, in both directions at once, with half-close preserved (Docker's hijacked attach/exec
streams depend on it). One thread per direction per connection: a send blocked on an SSH window
only stalls its own connection, and back-pressure is simply "don't read until the write returned".
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import select
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paramiko

from hypervisor import platform as host_platform
from hypervisor.errors import EngineUnavailableError, ForwardError
from hypervisor.platform import NotPrivateError
from hypervisor.unix_socket import remove_stale_socket

log = logging.getLogger(__name__)

BUFFER_SIZE = 256 * 1024
_HUP_POLL_SECONDS = 0.25
# What a dead channel or socket raises; anything else is a bug and is logged with a traceback.
_RELAY_ERRORS = (OSError, EOFError, paramiko.SSHException)


class _Workers:
    """Reusable daemon threads for relays; a task never waits for a free worker.

    Starting a Python thread cost 1-2 ms per connection under load in the benchmark, a hand-off
    to an idle one ~50 us. If no worker is idle a new thread is started, so a slow connection can
    never delay another; idle workers retire after `idle_timeout`.
    """

    def __init__(self, name: str, idle_timeout: float = 30.0) -> None:
        self._name = name
        self._idle_timeout = idle_timeout
        self._tasks: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # waiting workers not yet claimed by a submitted task

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        with self._lock:
            if self._idle > 0:
                self._idle -= 1
                self._tasks.put((fn, args))
                return
        threading.Thread(target=self._work, args=(fn, args), name=self._name, daemon=True).start()

    def _work(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        while True:
            try:
                fn(*args)
            except Exception:
                log.exception("%s: worker task failed", self._name)
            with self._lock:
                self._idle += 1
            while True:
                try:
                    fn, args = self._tasks.get(timeout=self._idle_timeout)
                    break
                except queue.Empty:
                    with self._lock:
                        if self._idle > 0:  # unclaimed: retire (claimed workers must take their task)
                            self._idle -= 1
                            return


class _Connection:
    """One accepted client and its channel; closes both once both directions are finished."""

    def __init__(self, client: socket.socket, name: str) -> None:
        self.client = client
        self.chan: paramiko.Channel | None = None
        self.name = name
        self.down_done = threading.Event()  # channel -> client finished
        self._lock = threading.Lock()
        self._pending = 2  # directions still running
        self._closed = False
        self.finished = threading.Event()
        self.released = threading.Event()  # its forwarder no longer counts it

    def relay_up(self) -> None:
        """client -> channel; on client EOF half-close the channel and watch for a full hang-up."""
        chan = self.chan
        assert chan is not None
        try:
            while True:
                data = self.client.recv(BUFFER_SIZE)
                if not data:
                    break
                chan.sendall(data)  # blocks on the SSH window: that is the back-pressure
        except _RELAY_ERRORS as e:
            if isinstance(e, OSError) and e.errno is None and chan.closed:
                # The guest closed the channel: refuse further client data but let any reply
                # already buffered still reach the client.
                self._shutdown(self.client, socket.SHUT_RD)
                self._direction_done()
                return
            log.debug("%s: client->guest ended: %s", self.name, e)
            self.abort()
            return
        try:
            chan.shutdown_write()
        except _RELAY_ERRORS:
            pass
        self._watch_client_hangup()
        self._direction_done()

    def relay_down(self) -> None:
        """channel -> client; on channel EOF half-close the client and let the other side go on."""
        chan = self.chan
        assert chan is not None
        try:
            while True:
                data = chan.recv(BUFFER_SIZE)
                if not data:
                    break
                self.client.sendall(data)
            self.client.shutdown(socket.SHUT_WR)
        except _RELAY_ERRORS as e:
            log.debug("%s: guest->client ended: %s", self.name, e)
            self.abort()
        finally:
            self.down_done.set()
        self._direction_done()

    def _watch_client_hangup(self) -> None:
        """After client EOF, wait for the reply to finish, unless the client is gone entirely.

        Half-close (shutdown(SHUT_WR)) and a closed/killed client both read as EOF; only a full
        hang-up raises POLLHUP. Without this, a killed client whose server never answers after EOF
        would pin its channel forever.
        """
        if not hasattr(select, "poll"):
            self.down_done.wait()
            return
        poller = select.poll()
        poller.register(self.client, select.POLLHUP)
        while not self.down_done.is_set():
            try:
                events = poller.poll(_HUP_POLL_SECONDS * 1000)
            except OSError:
                events = [(0, select.POLLHUP)]
            if events and not self.down_done.is_set():
                log.debug("%s: client hung up before the reply finished", self.name)
                self.abort()
                return

    def _direction_done(self) -> None:
        with self._lock:
            self._pending -= 1
            last = self._pending == 0
        if last:
            self.close()

    @staticmethod
    def _shutdown(sock: socket.socket, how: int) -> None:
        try:
            sock.shutdown(how)
        except OSError:
            pass

    def abort(self) -> None:
        """Tear down both ends now; wakes any thread blocked on either."""
        self._shutdown(self.client, socket.SHUT_RDWR)  # close() alone does not wake a blocked recv
        if self.chan is not None:
            self.chan.close()  # wakes recv and a sendall waiting for window

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.chan is not None:
            self.chan.close()
        self.client.close()
        self.finished.set()


class UnixSocketForwarder:
    """Listen on `listen_path` (0600, in a 0700 dir) and relay each client over a new channel."""

    def __init__(
        self, listen_path: Path, open_channel: Callable[[], paramiko.Channel], name: str = "engine"
    ) -> None:
        self.listen_path = Path(listen_path)
        self._open_channel = open_channel
        self.name = name
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the socket we made
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._workers = _Workers(f"forward-{name}")

    def __enter__(self) -> UnixSocketForwarder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def active_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    # --- setup ------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and start accepting; ForwardError if the path is unusable or already served."""
        if self._listener is not None:
            raise ForwardError(f"{self.name} forwarder already started on {self.listen_path}")
        path = self.listen_path
        _prepare_private_dir(path.parent)
        remove_stale_socket(path)
        self._listener = _bind_private(path)
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = False
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"forward-{self.name}-accept", daemon=True
        )
        self._accept_thread.start()
        log.info("%s forwarder listening on %s", self.name, path)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, drop every live connection and remove the socket file (if still ours)."""
        if self._listener is None:
            return
        self._stopping = True
        assert self._wake_w is not None and self._wake_r is not None
        self._wake_w.send(b"x")
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        self._listener.close()
        self._listener = None
        self._wake_r.close()
        self._wake_w.close()
        self._remove_own_socket()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.abort()
        for conn in connections:
            conn.released.wait(timeout)  # after `finished`: the count is right once stop returns
        log.info("%s forwarder stopped", self.name)

    def _remove_own_socket(self) -> None:
        try:
            st = os.lstat(self.listen_path)
        except FileNotFoundError:
            return
        if (st.st_dev, st.st_ino) == self._identity:
            os.unlink(self.listen_path)
        else:
            log.warning("%s was replaced by someone else; leaving it", self.listen_path)

    # --- serving ----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        listener, wake = self._listener, self._wake_r
        assert listener is not None and wake is not None
        while not self._stopping:
            try:
                ready, _, _ = select.select([listener, wake], [], [])
            except (OSError, ValueError):
                return
            if wake in ready or self._stopping:
                return
            try:
                client, _ = listener.accept()
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE):
                    log.error("%s: out of file descriptors, cannot accept: %s", self.name, e)
                    threading.Event().wait(0.1)
                continue
            client.setblocking(True)
            conn = _Connection(client, self.name)
            with self._lock:
                self._connections.add(conn)
            self._workers.submit(self._serve, conn)

    def abort_all(self) -> int:
        """Drop every live connection (their requests cannot finish: a VM paused on a full disk);
        the clients get an error instead of waiting for ever. Returns how many were dropped."""
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            conn.abort()
        return len(connections)

    def _serve(self, conn: _Connection) -> None:
        try:
            try:
                conn.chan = self._open_channel()
            except EngineUnavailableError as e:  # say why in the client's own protocol
                log.info("%s: answering a client with: %s", self.name, e)
                answer_unavailable(conn.client, str(e))
                conn.close()
                return
            except Exception as e:  # any failure must refuse the client promptly, never hang it
                log.warning("%s: refusing client, cannot open a channel to the guest: %s", self.name, e)
                conn.close()
                return
            if self._stopping:
                conn.close()
                return
            self._workers.submit(conn.relay_up)
            conn.relay_down()
            conn.finished.wait()
        except Exception:
            log.exception("%s: relay failed", self.name)
            conn.abort()
            conn.close()
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.released.set()


REQUEST_HEAD_LIMIT = 64 * 1024
REFUSAL_READ_S = 1.0


def unavailable_response(message: str) -> bytes:
    """An HTTP 503 in the engine API's error shape, so `docker` prints "Error response from
    daemon: <message>" and exits at once."""
    body = json.dumps({"message": message}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


def answer_unavailable(client: socket.socket, message: str) -> None:
    """Read the request head (a reply before it can reset the connection), answer 503, then drain
    briefly so closing with unread bytes does not turn the answer into a reset."""
    client.settimeout(REFUSAL_READ_S)
    try:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < REQUEST_HEAD_LIMIT:
            chunk = client.recv(65536)
            if not chunk:
                break
            head += chunk
        client.sendall(unavailable_response(message))
        client.shutdown(socket.SHUT_WR)
        while client.recv(65536):
            pass
    except OSError:
        pass


def _prepare_private_dir(directory: Path) -> None:
    """The socket's directory must be ours and 0700: that, not the socket mode, is the real fence."""
    try:
        host_platform.current().private_dir(directory)
    except NotPrivateError as e:
        raise ForwardError(f"socket directory {e}") from e


def _bind_private(path: Path) -> socket.socket:
    """Bind a listening socket whose file is never accessible beyond its owner.

    No os.umask(): it is process-wide and would race with other threads creating files. Instead:
    on Linux the node takes the socket inode's mode, so fchmod before bind makes it born 0600;
    everywhere, chmod happens before listen(), so a connect in between is refused anyway; and
    the directory is 0700.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            os.fchmod(sock.fileno(), 0o600)
        except OSError:
            pass  # not supported on this platform; chmod below still precedes listen()
        try:
            sock.bind(str(path))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ForwardError(f"{path} appeared while starting; another forwarder?", e) from e
            raise ForwardError(f"cannot bind {path}", e) from e
        os.chmod(path, 0o600)
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock
