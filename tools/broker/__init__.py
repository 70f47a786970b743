"""A real local Apache Kafka broker for development and tests.

Single node, KRaft mode (combined broker + controller), listening on
127.0.0.1 only. The broker's jars come from Maven Central through the
machine's Maven (``deploy/kafka/pom.xml``) and run on the machine's JDK (17+);
nothing else is downloaded. Everything the broker writes lives under one data
directory (see :class:`BrokerPaths`), by default ``<repo>/.touchline/kafka``.

Typical use::

    bootstrap = start(Path(".touchline/kafka"), port=9092)   # "127.0.0.1:9092"
    ...
    stop(Path(".touchline/kafka"))
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.topics import probe_broker

__all__ = [
    "DEFAULT_DATA_DIR",
    "KAFKA_VERSION",
    "BrokerError",
    "BrokerPaths",
    "BrokerStatus",
    "SecureListener",
    "classpath_is_cached",
    "resolve_classpath",
    "start",
    "status",
    "stop",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy" / "kafka"
POM_FILE = DEPLOY_DIR / "pom.xml"
TEMPLATE_FILE = DEPLOY_DIR / "server.properties.template"
LOG4J_FILE = DEPLOY_DIR / "log4j2.properties"
DEFAULT_DATA_DIR = REPO_ROOT / ".touchline" / "kafka"

#: The Kafka release pinned in deploy/kafka/pom.xml (informational).
KAFKA_VERSION = "4.4.0"

KAFKA_MAIN_CLASS = "kafka.Kafka"
STORAGE_TOOL_CLASS = "kafka.tools.StorageTool"
MIN_JAVA_MAJOR = 17

#: Small heap: the dev machine has 2 cores and runs test suites beside the broker.
JVM_OPTS: tuple[str, ...] = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
#: More JVM options for the broker, appended to JVM_OPTS (shell words), e.g. the test suite's
#: "-XX:TieredStopAtLevel=1": see tests/conftest.py for why and what it saves.
EXTRA_JVM_OPTS_ENV = "TOUCHLINE_BROKER_JVM_OPTS"

HOST = "127.0.0.1"
MVN_MISSING = (
    "Maven (mvn) not found on PATH: install it, e.g. apt-get install maven, "
    "or point KAFKA_BOOTSTRAP_SERVERS at an existing cluster"
)
JAVA_MISSING = (
    "Java (java) not found on PATH or in JAVA_HOME: install a JDK 17 or newer, "
    "e.g. apt-get install openjdk-17-jre-headless, or point KAFKA_BOOTSTRAP_SERVERS "
    "at an existing cluster"
)
_CLASSPATH_HEADER = "# touchline kafka classpath; pom sha256="
_START_MARKER = "==== touchline: starting Kafka"
_LOG_TAIL_LINES = 30
_BROKER_LOG_ROTATE_BYTES = 5 * 1024 * 1024
_MVN_TIMEOUT_S = 900.0


class BrokerError(Exception):
    """A local broker operation failed; the message says what to do about it."""


@dataclass(frozen=True)
class BrokerPaths:
    """Every file and directory of one local broker, derived from its base data dir."""

    base: Path
    classpath_file: Path = field(init=False)
    log_dir: Path = field(init=False)
    data_dir: Path = field(init=False)
    pid_file: Path = field(init=False)
    config_file: Path = field(init=False)
    broker_log: Path = field(init=False)
    lock_file: Path = field(init=False)

    def __post_init__(self) -> None:
        base = Path(self.base).expanduser().absolute()
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "classpath_file", base / "classpath.txt")
        object.__setattr__(self, "log_dir", base / "logs")
        object.__setattr__(self, "data_dir", base / "data")
        object.__setattr__(self, "pid_file", base / "broker.pid")
        object.__setattr__(self, "config_file", base / "server.properties")
        object.__setattr__(self, "broker_log", base / "broker.log")
        object.__setattr__(self, "lock_file", base / ".lock")


@dataclass(frozen=True)
class SecureListener:
    """An extra SASL_SSL listener on 127.0.0.1, for testing clients against TLS and SASL.

    `keystore` is one PEM file with the broker's private key (PKCS#8) and certificate chain;
    `truststore` the PEM CA that client certificates must be signed by (with `client_auth`).
    Every user in `users` may log in with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 (SCRAM
    credentials are stored when the storage is formatted, so use a fresh data dir).
    """

    port: int
    keystore: Path
    truststore: Path
    users: tuple[tuple[str, str], ...]
    client_auth: bool = True

    def properties(self) -> str:
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.users)
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return "\n".join(
            [
                "",
                "# extra SASL_SSL listener (tools.broker.SecureListener)",
                "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512",
                "listener.name.sasl_ssl.plain.sasl.jaas.config="
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};",
                f"listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config={scram}",
                f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
                "listener.name.sasl_ssl.ssl.keystore.type=PEM",
                f"listener.name.sasl_ssl.ssl.keystore.location={_escape_property(str(self.keystore))}",
                "listener.name.sasl_ssl.ssl.truststore.type=PEM",
                f"listener.name.sasl_ssl.ssl.truststore.location={_escape_property(str(self.truststore))}",
                f"listener.name.sasl_ssl.ssl.client.auth={'required' if self.client_auth else 'none'}",
                "",
            ]
        )

    def scram_arguments(self) -> list[str]:
        arguments = []
        for name, password in self.users:
            for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
                arguments += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return arguments


@dataclass(frozen=True)
class BrokerStatus:
    """What :func:`status` found: whether the broker process runs, and where."""

    running: bool
    pid: int | None
    bootstrap: str | None
    data_dir: Path
    log_file: Path | None = None


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _locked(paths: BrokerPaths) -> Iterator[None]:
    """Serialise start/stop on one data dir across processes."""
    paths.base.mkdir(parents=True, exist_ok=True)
    with open(paths.lock_file, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _pom_digest() -> str:
    try:
        return hashlib.sha256(POM_FILE.read_bytes()).hexdigest()
    except OSError as exc:
        raise BrokerError(f"Cannot read the Kafka pom {POM_FILE}: {exc.strerror}") from exc


def _shared_classpath_file(digest: str) -> Path | None:
    """Per-user cache shared by every data dir (tests use fresh ones), keyed by the pom."""
    cache_home = os.environ.get("XDG_CACHE_HOME")
    if not cache_home:
        try:
            cache_home = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory
            return None
    return Path(cache_home) / "touchline" / f"kafka-classpath-{digest[:16]}.txt"


def _write_classpath_cache(target: Path, digest: str, classpath: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{_CLASSPATH_HEADER}{digest}\n{classpath}\n", encoding="utf-8")
    tmp.replace(target)


def _read_cached_classpath(cache_file: Path, digest: str) -> str | None:
    try:
        lines = cache_file.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    if len(lines) < 2 or lines[0] != _CLASSPATH_HEADER + digest:
        return None
    classpath = lines[1].strip()
    entries = [entry for entry in classpath.split(os.pathsep) if entry]
    if not entries or not all(Path(entry).is_file() for entry in entries):
        return None  # e.g. ~/.m2 was cleaned: resolve again
    return classpath


def _tail(path: Path, lines: int = _LOG_TAIL_LINES, *, since_marker: bool = False) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    if since_marker:
        index = text.rfind(_START_MARKER)
        if index >= 0:
            text = text[index:]
    return "\n".join(text.splitlines()[-lines:])


def _find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise BrokerError(JAVA_MISSING)
    return found


def _check_java(java: str) -> None:
    try:
        result = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"Could not run {java} -version: {exc}") from exc
    output = result.stderr + result.stdout
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if match is None:
        return  # unknown format: let Kafka itself complain if it must
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))  # "1.8.0" is Java 8
    if major < MIN_JAVA_MAJOR:
        raise BrokerError(
            f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA_MAJOR} or newer, but {java} is "
            f"Java {major}. Install a newer JDK (e.g. apt-get install openjdk-17-jre-headless) "
            "and put it first on PATH or in JAVA_HOME."
        )


def _check_port_free(port: int, role: str) -> None:
    if not 0 < port < 65536:
        raise BrokerError(f"Invalid {role} port {port}: use a number between 1 and 65535.")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            reason = "already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            raise BrokerError(
                f"Cannot start Kafka: {role} port {port} on {HOST} is {reason}. "
                "If an earlier Touchline broker is still running, stop it with "
                "`python -m tools.broker stop` (with the same --data-dir); otherwise choose "
                f"another port, e.g. `python -m tools.broker start --port {port + 100}`."
            ) from exc


def _free_port(exclude: set[int]) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude:
            return port
    raise BrokerError("Could not find a free TCP port for the Kafka controller listener.")


def _read_pid(paths: BrokerPaths) -> int | None:
    try:
        text = paths.pid_file.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    try:
        pid = int(text.split()[0])
    except (ValueError, IndexError):
        return None
    return pid if pid > 0 else None


def _pid_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie (reaping it if it is our child)."""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return True  # no procfs: trust kill(0)
    state = stat.rsplit(")", 1)[-1].split()
    return not (state and state[0] in ("Z", "X"))


def _is_our_broker(pid: int, paths: BrokerPaths) -> bool:
    """True if *pid* is alive and is the Kafka JVM started for this data dir."""
    if not _pid_alive(pid):
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no procfs: a live pid from our pid file is the best we know
    args = [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]
    return KAFKA_MAIN_CLASS in args and str(paths.config_file) in args


def _running_pid(paths: BrokerPaths) -> int | None:
    pid = _read_pid(paths)
    if pid is not None and _is_our_broker(pid, paths):
        return pid
    return None


def running_pid(data_dir: Path) -> int | None:
    """The pid of the broker running for *data_dir*, if one does (the benchmarks count its CPU)."""
    return _running_pid(BrokerPaths(data_dir))


def _configured_port(paths: BrokerPaths) -> int | None:
    try:
        text = paths.config_file.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^advertised\.listeners=PLAINTEXT://[^:\s]+:(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def _escape_property(value: str) -> str:
    return value.replace("\\", "\\\\")


def _render_config(paths: BrokerPaths, port: int, controller_port: int, secure: SecureListener | None = None) -> None:
    try:
        template = string.Template(TEMPLATE_FILE.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BrokerError(f"Cannot read {TEMPLATE_FILE}: {exc.strerror}") from exc
    try:
        rendered = template.substitute(
            port=port,
            controller_port=controller_port,
            log_dirs=_escape_property(str(paths.data_dir)),
        )
    except (KeyError, ValueError) as exc:
        raise BrokerError(f"Bad placeholder in {TEMPLATE_FILE}: {exc}") from exc
    if secure is not None:
        extra = f"SASL_SSL://{HOST}:{secure.port}"
        rendered = re.sub(r"^(listeners=.*)$", rf"\1,{extra}", rendered, count=1, flags=re.MULTILINE)
        rendered = re.sub(r"^(advertised\.listeners=.*)$", rf"\1,{extra}", rendered, count=1, flags=re.MULTILINE)
        rendered = re.sub(
            r"^(listener\.security\.protocol\.map=.*)$", r"\1,SASL_SSL:SASL_SSL", rendered, count=1, flags=re.MULTILINE
        )
        rendered += secure.properties()
    tmp = paths.config_file.with_suffix(".properties.tmp")
    tmp.write_text(rendered, encoding="utf-8")
    tmp.replace(paths.config_file)


def _java_base_cmd(java: str, paths: BrokerPaths, classpath: str) -> list[str]:
    return [
        java,
        *JVM_OPTS,
        *shlex.split(os.environ.get(EXTRA_JVM_OPTS_ENV, "")),
        f"-Dlog4j2.configurationFile={LOG4J_FILE}",
        f"-Dkafka.logs.dir={paths.log_dir}",
        "-cp",
        classpath,
    ]


def _new_cluster_id() -> str:
    # Kafka cluster ids are base64url-encoded 16-byte UUIDs without padding. About 1 in 64 begins
    # with '-', which the storage tool reads as an option; Kafka's own Uuid.randomUuid() redraws those.
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def _format_storage(java: str, paths: BrokerPaths, classpath: str, extra: Sequence[str] = ()) -> None:
    """Format the KRaft metadata/log dir once; later starts reuse it."""
    if (paths.data_dir / "meta.properties").exists():
        return
    paths.data_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        *_java_base_cmd(java, paths, classpath),
        STORAGE_TOOL_CLASS,
        "format",
        "--config",
        str(paths.config_file),
        "--cluster-id",
        _new_cluster_id(),
        *extra,
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, cwd=paths.base)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"Kafka storage format failed to run: {exc}") from exc
    output = (result.stdout + result.stderr).strip()
    with open(paths.broker_log, "a", encoding="utf-8") as log:
        log.write(f"kafka-storage format (exit {result.returncode}):\n{output}\n")
    if result.returncode != 0:
        tail = "\n".join(output.splitlines()[-_LOG_TAIL_LINES:])
        raise BrokerError(f"Formatting Kafka storage in {paths.data_dir} failed (exit {result.returncode}):\n{tail}")


def _rotate_broker_log(paths: BrokerPaths) -> None:
    try:
        if paths.broker_log.stat().st_size > _BROKER_LOG_ROTATE_BYTES:
            paths.broker_log.replace(paths.broker_log.with_name(paths.broker_log.name + ".1"))
    except FileNotFoundError:
        pass


# Runs in a short-lived intermediate interpreter: starts the JVM in the new
# session it inherits, prints its pid and exits, so the broker is re-parented to
# init and outlives (and is never a zombie child of) the calling process.
_LAUNCHER = (
    "import subprocess, sys\n"
    "log = open(sys.argv[1], 'ab')\n"
    "proc = subprocess.Popen(sys.argv[3:], cwd=sys.argv[2], stdin=subprocess.DEVNULL,\n"
    "                        stdout=log, stderr=subprocess.STDOUT, close_fds=True)\n"
    "print(proc.pid, flush=True)\n"
)


def _launch(cmd: list[str], paths: BrokerPaths) -> int:
    try:
        result = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(paths.broker_log), str(paths.base), *cmd],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            start_new_session=True,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BrokerError(f"Could not launch the Kafka JVM: {exc}") from exc
    try:
        pid = int(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise BrokerError(f"Could not launch the Kafka JVM: {result.stderr.strip() or 'no pid reported'}") from exc
    tmp = paths.pid_file.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n", encoding="utf-8")
    tmp.replace(paths.pid_file)
    return pid


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM, wait up to *timeout* seconds for a clean shutdown, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _pid_alive(pid):
        time.sleep(0.1)


def _startup_failure(paths: BrokerPaths, headline: str) -> BrokerError:
    tail = _tail(paths.broker_log, since_marker=True).strip()
    if len(tail.splitlines()) <= 1:  # nothing but our start marker: look at server.log too
        tail = (tail + "\n" + _tail(paths.log_dir / "server.log")).strip()
    return BrokerError(
        f"{headline}\nFull logs: {paths.broker_log} and {paths.log_dir / 'server.log'}\n---- last lines ----\n{tail}"
    )


def _wait_until_ready(paths: BrokerPaths, pid: int, bootstrap: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if not _pid_alive(pid):
            paths.pid_file.unlink(missing_ok=True)
            raise _startup_failure(paths, f"Kafka (pid {pid}) exited during startup.")
        if probe_broker(bootstrap, timeout=3.0):
            return
        if time.monotonic() >= deadline:
            _terminate(pid, timeout=15)
            paths.pid_file.unlink(missing_ok=True)
            raise _startup_failure(
                paths,
                f"Kafka (pid {pid}) did not answer on {bootstrap} within {timeout:.0f}s; it has been stopped.",
            )
        time.sleep(0.25)


# --------------------------------------------------------------------------- public API


def classpath_is_cached(paths: BrokerPaths) -> bool:
    """True if :func:`resolve_classpath` can answer without running Maven."""
    digest = _pom_digest()
    if _read_cached_classpath(paths.classpath_file, digest) is not None:
        return True
    shared = _shared_classpath_file(digest)
    return shared is not None and _read_cached_classpath(shared, digest) is not None


def resolve_classpath(paths: BrokerPaths, *, refresh: bool = False) -> str:
    """Return the broker's Java classpath, resolving it with Maven on first use.

    Maven runs ``dependency:build-classpath`` on ``deploy/kafka/pom.xml`` (which
    downloads the jars into ``~/.m2`` the first time); the result is cached in
    ``paths.classpath_file`` (and in a per-user copy under ``$XDG_CACHE_HOME``
    or ``~/.cache/touchline`` that new data dirs reuse) together with the pom's
    hash, and resolved again when the pom changes, a cached jar has
    disappeared, or *refresh* is true.
    """
    digest = _pom_digest()
    shared = _shared_classpath_file(digest)
    if not refresh:
        cached = _read_cached_classpath(paths.classpath_file, digest)
        if cached is not None:
            return cached
        cached = _read_cached_classpath(shared, digest) if shared is not None else None
        if cached is not None:
            _write_classpath_cache(paths.classpath_file, digest, cached)
            return cached
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError(MVN_MISSING)
    paths.base.mkdir(parents=True, exist_ok=True)
    out_file = paths.classpath_file.with_suffix(".mvn.tmp")
    out_file.unlink(missing_ok=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM_FILE),
        "dependency:build-classpath",
        f"-Dmdep.outputFile={out_file}",
        "-Dmdep.includeScope=runtime",
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=_MVN_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BrokerError(
            f"Maven did not finish resolving Kafka within {_MVN_TIMEOUT_S:.0f}s (is Maven Central reachable?)"
        ) from exc
    except OSError as exc:
        raise BrokerError(f"Could not run Maven ({mvn}): {exc}") from exc
    if result.returncode != 0 or not out_file.is_file():
        output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-_LOG_TAIL_LINES:])
        raise BrokerError(
            f"Maven could not resolve the Kafka classpath from {POM_FILE} "
            f"(exit {result.returncode}); is Maven Central reachable?\n{output}"
        )
    classpath = out_file.read_text(encoding="utf-8").strip()
    out_file.unlink(missing_ok=True)
    if not classpath:
        raise BrokerError(f"Maven produced an empty classpath for {POM_FILE}")
    _write_classpath_cache(paths.classpath_file, digest, classpath)
    if shared is not None:
        with contextlib.suppress(OSError):  # the shared copy is only a speed-up
            _write_classpath_cache(shared, digest, classpath)
    return classpath


def start(
    data_dir: Path,
    port: int = 9092,
    controller_port: int | None = None,
    timeout: float = 60,
    secure: SecureListener | None = None,
) -> str:
    """Start the local broker for *data_dir* and return its bootstrap string.

    Idempotent: if this data dir's broker already runs on *port* and answers,
    its bootstrap is returned and nothing is started. *controller_port* is the
    KRaft controller listener (a free port is picked when None). *timeout*
    bounds the wait for the broker to answer (Maven's first resolution is not
    counted). *secure* adds a SASL_SSL listener (tests of TLS and SASL clients). Raises
    :class:`BrokerError` with a readable message on failure.
    """
    paths = BrokerPaths(Path(data_dir))
    bootstrap = f"{HOST}:{port}"
    with _locked(paths):
        pid = _running_pid(paths)
        if pid is not None:
            running_port = _configured_port(paths)
            if running_port is not None and running_port != port:
                raise BrokerError(
                    f"A Touchline broker for {paths.base} is already running on port "
                    f"{running_port} (pid {pid}). Use bootstrap {HOST}:{running_port}, or "
                    f"stop it with `python -m tools.broker stop` before starting on port {port}."
                )
            _wait_until_ready(paths, pid, bootstrap, timeout)
            return bootstrap
        paths.pid_file.unlink(missing_ok=True)  # stale

        java = _find_java()
        _check_java(java)
        if controller_port is None:
            _check_port_free(port, "Kafka")
            controller_port = _free_port(exclude={port} | ({secure.port} if secure else set()))
        else:
            if controller_port == port:
                raise BrokerError("The Kafka port and the controller port must differ.")
            _check_port_free(port, "Kafka")
            _check_port_free(controller_port, "Kafka controller")

        classpath = resolve_classpath(paths)
        paths.log_dir.mkdir(parents=True, exist_ok=True)
        paths.data_dir.mkdir(parents=True, exist_ok=True)
        _rotate_broker_log(paths)
        with open(paths.broker_log, "a", encoding="utf-8") as log:
            stamp = datetime.now(UTC).isoformat(timespec="seconds")
            log.write(
                f"{_START_MARKER} {KAFKA_VERSION} on {bootstrap} "
                f"(controller {HOST}:{controller_port}) at {stamp} ====\n"
            )
        if secure is not None:
            _check_port_free(secure.port, "Kafka SASL_SSL")
        _render_config(paths, port, controller_port, secure)
        _format_storage(java, paths, classpath, secure.scram_arguments() if secure else ())
        cmd = [
            *_java_base_cmd(java, paths, classpath),
            KAFKA_MAIN_CLASS,
            str(paths.config_file),
        ]
        pid = _launch(cmd, paths)
        _wait_until_ready(paths, pid, bootstrap, timeout)
        return bootstrap


def stop(data_dir: Path, timeout: float = 30) -> bool:
    """Stop the local broker for *data_dir*; False if none was running.

    Sends SIGTERM and waits up to *timeout* seconds for Kafka's clean shutdown,
    then SIGKILL. The pid file is removed either way.
    """
    paths = BrokerPaths(Path(data_dir))
    if not paths.base.exists():
        return False
    with _locked(paths):
        pid = _running_pid(paths)
        if pid is None:
            paths.pid_file.unlink(missing_ok=True)
            return False
        _terminate(pid, timeout)
        if _pid_alive(pid):
            raise BrokerError(f"Kafka (pid {pid}) did not exit even after SIGKILL.")
        paths.pid_file.unlink(missing_ok=True)
        return True


def status(data_dir: Path) -> BrokerStatus:
    """Report whether the local broker for *data_dir* is running (process check only)."""
    paths = BrokerPaths(Path(data_dir))
    pid = _running_pid(paths)
    if pid is None:
        return BrokerStatus(running=False, pid=None, bootstrap=None, data_dir=paths.base, log_file=paths.broker_log)
    port = _configured_port(paths)
    return BrokerStatus(
        running=True,
        pid=pid,
        bootstrap=f"{HOST}:{port}" if port is not None else None,
        data_dir=paths.base,
        log_file=paths.broker_log,
    )
