"""One shared, pinned, key-only SSH transport to the guest's sshd, and channels over it.

Every engine-socket connection becomes one `direct-streamlocal@openssh.com` channel on the same
paramiko transport, so a new `docker` connection costs one channel-open round trip, not a TCP
connect + key exchange + auth.
"""

from __future__ import annotations

import base64
import binascii
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paramiko
from paramiko.common import cMSG_CHANNEL_OPEN
from paramiko.message import Message

from hypervisor.errors import HostKeyMismatchError, SSHError

log = logging.getLogger(__name__)

DOCKER_SOCKET = "/var/run/docker.sock"
STREAMLOCAL_KIND = "direct-streamlocal@openssh.com"
KEEPALIVE_SECONDS = 15
# AES-GCM is both the fastest on AES-NI hosts and an AEAD (one pass, no separate MAC).
PREFERRED_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


@dataclass(frozen=True)
class SSHTarget:
    """Where the guest's sshd is reached from the host and how we prove/verify identities."""

    host: str
    port: int
    user: str
    client_key: Path
    host_public: str  # pinned guest host key, "ssh-ed25519 AAAA... [comment]"
    instance: str = "default"


def parse_public_line(line: str) -> tuple[str, bytes]:
    """Split an OpenSSH public key line into (key type, key blob); ValueError if malformed."""
    parts = line.split()
    if len(parts) < 2:
        raise ValueError("expected '<type> <base64> [comment]'")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error as e:
        raise ValueError(f"bad base64 in public key: {e}") from e
    # The blob starts with its own type string: a mislabelled line is a mismatch, not a pass.
    blob_type = Message(blob).get_text()
    if blob_type != parts[0]:
        raise ValueError(f"key type {parts[0]!r} does not match its blob ({blob_type!r})")
    return parts[0], blob


class _StreamLocalTransport(paramiko.Transport):
    """A Transport that can open `direct-streamlocal@openssh.com` channels.

    This is the ONLY place that relies on paramiko internals. `Transport.open_channel` builds the
    CHANNEL_OPEN message (type, sender channel, window, max packet), registers the channel and
    waits for the answer, but only knows the extra fields of direct-tcpip/x11. We reuse all of it
    and append the streamlocal fields (OpenSSH PROTOCOL §2.4: string socket path, string reserved,
    uint32 reserved) in `_send_user_message`, which `open_channel` calls on the calling thread.
    tests/unit/test_ssh.py fails loudly if a paramiko upgrade changes that contract.
    """

    _pending = threading.local()

    def open_streamlocal(self, path: str, timeout: float | None = None) -> paramiko.Channel:
        self._pending.path = path
        try:
            return self.open_channel(STREAMLOCAL_KIND, timeout=timeout)
        finally:
            self._pending.path = None

    def _send_user_message(self, data):  # noqa: ANN001 - paramiko's signature
        path = getattr(self._pending, "path", None)
        if path is not None and isinstance(data, Message) and _is_streamlocal_open(data):
            self._pending.path = None
            data.add_string(path)
            data.add_string("")
            data.add_int(0)
        return super()._send_user_message(data)


def _is_streamlocal_open(m: Message) -> bool:
    probe = Message(m.asbytes())
    return probe.get_byte() == cMSG_CHANNEL_OPEN and probe.get_text() == STREAMLOCAL_KIND


class _QuickAckSocket(socket.socket):
    """Linux: re-arm TCP_QUICKACK after every read (the kernel clears it).

    sshd leaves Nagle on for non-interactive connections, so a small message it sends while an
    earlier one is unacknowledged waits for our ACK, which delayed-ACK holds for ~40 ms. That
    showed up as 40-50 ms channel opens at p99; acknowledging at once removes it.
    """

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data = super().recv(bufsize, flags)
        try:
            self.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass
        return data


def _tune_socket(sock: socket.socket) -> socket.socket:
    # paramiko leaves Nagle on; with delayed ACKs that costs ~40-50 ms per small message.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if not hasattr(socket, "TCP_QUICKACK"):
        return sock
    timeout = sock.gettimeout()
    tuned = _QuickAckSocket(sock.family, sock.type, sock.proto, fileno=sock.detach())
    tuned.settimeout(timeout)
    return tuned


def _cipher_order(supported: tuple[str, ...]) -> list[str]:
    """Our preference first (only those this paramiko supports), then whatever else it offers."""
    first = [c for c in PREFERRED_CIPHERS if c in supported]
    return first + [c for c in supported if c not in first]


def _host_key_types(pinned_type: str, supported: tuple[str, ...]) -> list[str]:
    """Ask the server for exactly the pinned key's algorithm so it presents the pinned key."""
    wanted = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"] if pinned_type == "ssh-rsa" else [pinned_type]
    return [t for t in wanted if t in supported] or list(supported)


class GuestSSH:
    """Owns the one SSH transport to a guest; reconnects on demand, one reconnect at a time."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self._pinned_type, self._pinned_blob = parse_public_line(target.host_public)
        self._lock = threading.Lock()
        self._transport: _StreamLocalTransport | None = None

    def __enter__(self) -> GuestSSH:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- connection -------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> None:
        """(Re)connect now: TCP, key exchange, exact host key check, publickey auth."""
        with self._lock:
            self._connect_locked(timeout)

    def ensure_connected(self, timeout: float = 10.0) -> paramiko.Transport:
        """Return a live transport, reconnecting if the old one died (guest reboot, sshd restart)."""
        transport = self._transport
        if transport is not None and transport.is_active():
            return transport
        with self._lock:
            transport = self._transport  # another thread may have reconnected while we waited
            if transport is not None and transport.is_active():
                return transport
            return self._connect_locked(timeout)

    def is_active(self) -> bool:
        transport = self._transport
        return transport is not None and transport.is_active()

    def probe(self, timeout: float = 10.0, still_expected: Callable[[], bool] = lambda: True) -> bool:
        """Ask sshd for a reply (an OpenSSH keepalive global request) and wait up to `timeout`.

        paramiko's own keepalives expect no reply, so a transport whose peer is gone (a guest
        that was stopped for minutes, a network path that vanished) looks alive until the next
        channel open hangs. No reply in time: the transport is dropped, so in-flight connections
        end with an error instead of hanging, and the next channel reconnects. True if answered
        (a refusal counts: sshd answered) or if there is no transport to probe.
        """
        transport = self._transport
        if transport is None or not transport.is_active():
            return True
        answered = threading.Event()

        def ask() -> None:
            try:
                transport.global_request("keepalive@openssh.com", wait=True)
            except Exception:  # noqa: BLE001 - paramiko's errors vary; a dead transport is what we report
                pass
            answered.set()

        threading.Thread(target=ask, name="ssh-probe", daemon=True).start()
        if answered.wait(timeout) and transport.is_active():
            return True
        if not still_expected():  # e.g. QEMU paused the VM meanwhile: silence is no sign of death
            return True
        log.warning("guest sshd did not answer a keepalive in %.0f s: dropping the SSH transport", timeout)
        self._drop(transport)
        return False

    def close(self) -> None:
        with self._lock:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def wait_until_reachable(self, deadline: float, attempt_timeout: float = 3.0) -> None:
        """Retry `connect` until sshd answers or `deadline` (a time.monotonic() value) passes.

        A host key mismatch is never retried: waiting cannot fix it and it may be an attack.
        """
        delay = 0.1
        last: BaseException | None = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SSHError(
                    f"guest sshd at {self.target.host}:{self.target.port} did not answer in time", last
                )
            try:
                self.connect(timeout=max(0.5, min(attempt_timeout, remaining)))
                return
            except HostKeyMismatchError:
                raise
            except SSHError as e:
                last = e
                log.debug("guest sshd not reachable yet: %s", e)
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))
            delay = min(delay * 2, 1.0)

    def _connect_locked(self, timeout: float) -> _StreamLocalTransport:
        old, self._transport = self._transport, None
        if old is not None:
            old.close()
        t = self.target
        try:
            sock = socket.create_connection((t.host, t.port), timeout=timeout)
        except OSError as e:
            raise SSHError(f"cannot reach guest sshd at {t.host}:{t.port}", e) from e
        transport = _StreamLocalTransport(_tune_socket(sock))
        try:
            self._handshake(transport, timeout)
        except BaseException:
            transport.close()
            raise
        self._transport = transport
        log.info("ssh connected to instance %r at %s:%s", t.instance, t.host, t.port)
        return transport

    def _handshake(self, transport: _StreamLocalTransport, timeout: float) -> None:
        t = self.target
        options = transport.get_security_options()
        options.ciphers = _cipher_order(tuple(options.ciphers))
        options.key_types = _host_key_types(self._pinned_type, tuple(options.key_types))
        transport.banner_timeout = timeout
        transport.auth_timeout = timeout
        try:
            transport.start_client(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SSHError(f"ssh handshake with guest at {t.host}:{t.port} failed", e) from e
        try:
            server_key = transport.get_remote_server_key()
        except paramiko.SSHException as e:  # the peer hung up right after the handshake
            raise SSHError(f"ssh session with guest at {t.host}:{t.port} ended during the handshake", e) from e
        self._verify_host_key(server_key)
        try:
            pkey = paramiko.PKey.from_path(t.client_key)
        except (OSError, paramiko.SSHException, ValueError) as e:
            raise SSHError(f"cannot load client key {t.client_key}", e) from e
        try:
            transport.auth_publickey(t.user, pkey)
        except paramiko.AuthenticationException as e:
            raise SSHError(f"guest rejected client key {t.client_key} for user {t.user!r}", e) from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise SSHError("ssh authentication with guest failed", e) from e
        transport.set_keepalive(KEEPALIVE_SECONDS)
        log.debug("ssh cipher %s", transport.remote_cipher)

    def _verify_host_key(self, key: paramiko.PKey) -> None:
        blob = key.asbytes()
        if Message(blob).get_text() == self._pinned_type and blob == self._pinned_blob:
            return
        log.error(
            "host key mismatch for instance %r: got %s %s",
            self.target.instance,
            key.get_name(),
            key.fingerprint,
        )
        raise HostKeyMismatchError(
            f"guest host key for instance '{self.target.instance}' does not match the pinned key: "
            "refusing to connect (if you reset the VM or rebuilt its disk outside Pinnace, recreate "
            f"the instance; otherwise something else may be answering on port {self.target.port})"
        )

    # --- channels ---------------------------------------------------------------------------

    def open_unix_channel(self, path: str = DOCKER_SOCKET, timeout: float = 10.0) -> paramiko.Channel:
        """A new channel connected to the unix socket `path` inside the guest."""
        transport = self.ensure_connected(timeout)
        try:
            return self._open_streamlocal(transport, path, timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            if transport.is_active() and "Timeout" in str(e):
                # A slow guest, not a dead link: dropping the transport would cut every live
                # connection (log follows, builds) for one slow open.
                raise SSHError(f"opening a channel to {path} timed out after {timeout:.0f} s", e) from e
            # The transport died under us (or hangs half-open): reconnect once and retry.
            log.info("channel open failed (%s); reconnecting", e)
            self._drop(transport)
        transport = self.ensure_connected(timeout)
        try:
            return self._open_streamlocal(transport, path, timeout)
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._drop(transport)
            raise SSHError(f"cannot open a channel to {path} in the guest", e) from e

    @staticmethod
    def _open_streamlocal(transport: _StreamLocalTransport, path: str, timeout: float) -> paramiko.Channel:
        """One attempt; a refusal by the guest (no such socket) is final, other errors are the caller's."""
        try:
            return transport.open_streamlocal(path, timeout)
        except paramiko.ChannelException as e:
            raise SSHError(f"guest refused to connect to {path}", e) from e

    def _drop(self, transport: paramiko.Transport) -> None:
        with self._lock:
            if self._transport is transport:
                self._transport = None
        transport.close()


@dataclass(frozen=True)
class CommandResult:
    exit_status: int
    stdout: bytes
    stderr: bytes


def run_command(ssh: GuestSSH, command: str, timeout: float = 30.0, limit: int = 4 << 20) -> CommandResult:
    """`command` in the guest (exec, no pty) with its exit status and output, all within `timeout`
    (SSHError past it); stdout keeps its last `limit` bytes (the end of a log is what matters)."""
    deadline = time.monotonic() + timeout
    try:
        transport = ssh.ensure_connected(min(timeout, 10.0))
        chan = transport.open_session(timeout=max(1.0, deadline - time.monotonic()))
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise SSHError("cannot open an exec session in the guest", e) from e
    stdout, stderr = bytearray(), bytearray()
    try:
        chan.settimeout(0.2)
        chan.exec_command(command)
        chan.shutdown_write()
        while True:
            while chan.recv_stderr_ready():
                stderr += chan.recv_stderr(65536)
            try:
                data = chan.recv(65536)
            except TimeoutError:
                data = None
            if data == b"":
                break
            if data:
                stdout += data
                if len(stdout) > limit:
                    del stdout[:-limit]
            if time.monotonic() > deadline:
                raise SSHError(f"no end of `{command.split()[0]}` in the guest within {timeout:g} s")
        while chan.recv_stderr_ready():
            stderr += chan.recv_stderr(65536)
        if not chan.status_event.wait(max(0.0, deadline - time.monotonic())):
            raise SSHError(f"no exit status of `{command.split()[0]}` in the guest within {timeout:g} s")
        return CommandResult(chan.exit_status, bytes(stdout), bytes(stderr[-65536:]))
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise SSHError(f"`{command.split()[0]}` failed in the guest", e) from e
    finally:
        chan.close()

