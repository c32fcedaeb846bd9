"""Test helpers: a head and a second Ray node on this machine, each a separate `ray start` on loopback,
and a gate that holds shard tasks inside their image reads so a test can see where they run or kill them.

Loopback only. `ray start` replaces 127.0.0.1 by the machine's outward address
(``ray._private.services.resolve_ip_for_localhost``), and a node on a non-loopback address listens on
every interface. Ray's switch against that, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, also forbids a
second node from joining, so the nodes start through ``KEEP_LOOPBACK``; drivers, which never check
that guard, use the switch (``LOOPBACK_DRIVER``). Every service then listens on 127.0.0.1.

Each node's processes share the session of the `ray start` that launched them (raylet-spawned workers
too): the session says which node a process belongs to, and stopping a node kills that session only
(`ray stop` would kill every Ray process on the machine, whatever its ``--temp-dir``).
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from test_shard_stage import processes_in_session

LOOPBACK = "127.0.0.1"
KEEP_LOOPBACK = (
    "import sys, ray._private.services as services; "
    "services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; sys.exit(main())"
)
LOOPBACK_DRIVER = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def ray_free_env(home: Path, **settings: str) -> dict[str, str]:
    """This process's environment without any ``RAY_*`` (an in-process ``ray.init`` sets
    ``RAY_AUTH_MODE``), with ``home`` as HOME (where Ray keeps ``.ray/auth_token``) and ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return env | {"HOME": str(home)} | settings


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_session(session: int) -> None:
    """SIGKILL every process of ``session`` and wait until none is left running."""
    deadline = time.monotonic() + 30
    while (alive := [pid for pid in processes_in_session(session) if is_alive(pid)]) and time.monotonic() < deadline:
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.05)
    assert not alive, f"processes {alive} of session {session} survived SIGKILL"


@dataclass
class RayNode:
    name: str
    session: int  # the pid of its `ray start`, whose session every process of the node keeps
    log: Path

    def wait_started(self, process: subprocess.Popen, timeout: float = 180) -> None:
        if process.wait(timeout) != 0:
            raise RuntimeError(f"`ray start` of the {self.name} failed:\n{self.log.read_text()[-4000:]}")


@dataclass
class LoopbackCluster:
    """A head and a worker node; token authentication on, the token in ``home``/.ray/auth_token."""

    root: Path  # short: Ray's socket paths under it must fit in 107 bytes
    home: Path
    token: str = field(default_factory=lambda: secrets.token_hex(32))  # as `ray get-auth-token --generate`
    port: int = field(default_factory=free_port)
    nodes: list[RayNode] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> None:
        token_file = self.home / ".ray" / "auth_token"
        token_file.parent.mkdir(parents=True, exist_ok=True)
        token_file.write_text(self.token)
        self.start_node("head", ["--head", "--port", str(self.port), "--include-dashboard", "false",
                                 "--ray-client-server-port", str(free_port())])
        self.start_node("worker", ["--address", self.address])

    def start_node(self, name: str, args: list[str]) -> None:
        # RAY_AUTH_MODE=token: a joining node, unlike a head, does not turn it on from the token file alone
        env = ray_free_env(self.home, RAY_AUTH_MODE="token")
        command = [sys.executable, "-c", KEEP_LOOPBACK, "start", "--node-ip-address", LOOPBACK,
                   "--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--disable-usage-stats",
                   "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(self.root / name), *args]
        log = self.root / f"{name}.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, env=env, start_new_session=True, stdout=out, stderr=out)
        node = RayNode(name, process.pid, log)
        self.nodes.append(node)  # before waiting: a node that fails to start is still stopped
        node.wait_started(process)
        assert f"Local node IP: {LOOPBACK}" in log.read_text(), f"the {name} left loopback: see {log}"

    def node_of(self, pid: int) -> str | None:
        try:
            session = os.getsid(pid)
        except ProcessLookupError:
            return None
        return next((node.name for node in self.nodes if node.session == session), None)

    def processes(self) -> list[int]:
        return [pid for node in self.nodes for pid in processes_in_session(node.session)]

    def stop(self) -> None:
        for node in self.nodes:
            kill_session(node.session)


@dataclass
class Reader:
    """A shard task blocked reading an image pipe, and the write end the gate holds open."""

    path: Path
    pid: int
    node: str | None
    fd: int


@dataclass
class ImageGate:
    """Images as named pipes: a shard task that opens one waits until the test feeds or kills it.

    ``reads`` lists ``(path, pid, node)`` of every image fed, in order (a retried task reads its
    images again); ``killed`` the readers killed.
    """

    images: dict[Path, bytes]  # pipe -> the bytes it gives
    cluster: LoopbackCluster
    reads: list[tuple[Path, int, str | None]] = field(default_factory=list)
    killed: list[Reader] = field(default_factory=list)
    write_ends: dict[Path, int] = field(default_factory=dict)

    def poll(self) -> list[Reader]:
        """Every reader now waiting on a pipe. Opening the write end of a pipe someone opened lets
        their open() return; they then show the pipe among their files and wait for its bytes."""
        for path in sorted(set(self.images) - set(self.write_ends)):
            try:
                self.write_ends[path] = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: nobody has it open
                    raise
        if not self.write_ends:
            return []
        killed = {reader.pid for reader in self.killed}  # a dying process may still hold its pipe
        holders = {path: pid for pid in self.cluster.processes() if pid not in killed
                   for path in files_of(pid) & self.write_ends.keys()}
        return [Reader(path, pid, self.cluster.node_of(pid), self.write_ends[path]) for path, pid in holders.items()]

    def feed(self, reader: Reader) -> None:
        os.set_blocking(reader.fd, True)
        with os.fdopen(self.write_ends.pop(reader.path), "wb") as pipe:
            pipe.write(self.images[reader.path])
        # until the reader closes it, opening the pipe again would append to what it reads
        wait_until(lambda: reader.path not in files_of(reader.pid), f"{reader.pid} to close {reader.path}")
        self.reads.append((reader.path, reader.pid, reader.node))

    def kill(self, reader: Reader) -> None:
        """SIGKILL the reader. The write end stays open, so the retry's open() returns at once."""
        os.kill(reader.pid, signal.SIGKILL)
        self.killed.append(reader)

    def close(self) -> None:
        for fd in self.write_ends.values():
            os.close(fd)
        self.write_ends.clear()


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.005)


def files_of(pid: int) -> set[Path]:
    """The paths of the files ``pid`` has open; empty once it ended."""
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return set()
    paths = set()
    for fd in fds:
        try:
            paths.add(Path(os.readlink(fd)))
        except OSError:  # closed while we looked
            continue
    return paths
