"""`cnnlab team`: PostgreSQL and an MLflow tracking server on this machine, for sweeps whose workers run on
any machine that reaches them.

`cnnlab team up` runs in the foreground, as `cnnlab ui` does: Ctrl-C, SIGTERM or `cnnlab team down` stop it,
and its servers never outlive it (each runs under the guard of cnnlab.ui). It starts
- PostgreSQL from the system's package: a cluster in <dir>/pg (initdb on first start), role `cnnlab` with a
  random password (scram-sha-256), bound to loopback, databases `mlflow` and `optuna`;
- `mlflow server --app-name basic-auth` on the `mlflow` database, its artifacts served through the server
  (<dir>/artifacts), so that workers share nothing but two URLs; an `admin` account with a random password.
A server that stops (it crashed, or an operator restarted it) is started again on the same port.

Passwords live in <dir>/secrets.env (mode 600) and reach servers and clients through the environment
(PGPASSWORD, MLFLOW_TRACKING_PASSWORD): never on a command line, which `ps` shows to every user.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

from . import signals
from .errors import CnnlabError
from .schema import runs_dir
from .ui import LOCAL_HOSTS, _check_port, stop_group

PG_PORT = 5433  # beside a system PostgreSQL on 5432
MLFLOW_PORT = 5001  # beside `cnnlab ui` on 5000
ROLE = "cnnlab"
ADMIN = "admin"


def team_dir(directory: Optional[Path] = None) -> Path:
    return Path(directory) if directory else runs_dir() / "team"


# ---------------------------------------------------------------- PostgreSQL's programs, run as its user


def pg_program(name: str) -> str:
    """A PostgreSQL server program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    if versions:
        return str(versions[-1])
    raise CnnlabError(f"PostgreSQL is not installed ({name} is neither on PATH nor in /usr/lib/postgresql/*/bin). "
                      "Install it (Debian/Ubuntu: `sudo apt-get install postgresql`), or give `cnnlab sweep "
                      "--storage` the URL of a PostgreSQL you already run.")


def as_postgres(cmd: List[str]) -> List[str]:
    """PostgreSQL refuses to run as root: as root, `cmd` runs as the system's `postgres` user."""
    if os.geteuid() != 0:
        return cmd
    import pwd

    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise CnnlabError("PostgreSQL refuses to run as root and there is no `postgres` user to run it as: run "
                          "`cnnlab team up` as an ordinary user, or install Debian's postgresql package (it "
                          "creates one).") from None
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *cmd]


def _give_to_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        user = pwd.getpwnam("postgres")
        os.chown(path, user.pw_uid, user.pw_gid)


def _driver():
    """psycopg, or the error naming the extra that brings it (and the auth app's Flask-WTF, which the MLflow
    server would otherwise only miss at its start, in its log)."""
    import importlib.util

    missing = [name for module, name in (("psycopg", "the PostgreSQL driver psycopg"),
                                         ("flask_wtf", "Flask-WTF for MLflow's basic-auth app"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise CnnlabError(f"Team mode needs {' and '.join(missing)}, not installed here: "
                          "`pip install 'cnnlab[team]'`.")
    import psycopg

    return psycopg


# ---------------------------------------------------------------- the two servers


@dataclass
class Team:
    """Where a team's servers are and how to reach them. The passwords stay out of every URL."""

    dir: Path
    host: str = "127.0.0.1"  # what the servers bind to
    port: int = MLFLOW_PORT
    pg_port: int = PG_PORT
    pg_password: str = ""
    admin_password: str = ""
    secret_key: str = ""

    @property
    def address(self) -> str:
        """The host name workers use: the bound address, or this machine's name when bound to all."""
        return socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def storage(self) -> str:
        return f"postgresql://{ROLE}@{self.address}:{self.pg_port}/optuna"

    def client_env(self) -> Dict[str, str]:
        """What a worker needs: the URLs and the credentials (secrets.env holds exactly this)."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_TRACKING_USERNAME": ADMIN,
                "MLFLOW_TRACKING_PASSWORD": self.admin_password, "PGPASSWORD": self.pg_password,
                "CNNLAB_STORAGE": self.storage}

    # ---- secrets.env: written once, read by `team up` again (the cluster keeps its password) and by workers

    @property
    def secrets_path(self) -> Path:
        return self.dir / "secrets.env"

    def load_or_make_secrets(self) -> None:
        if self.secrets_path.exists():
            values = read_env(self.secrets_path)
            self.pg_password, self.admin_password = values["PGPASSWORD"], values["MLFLOW_TRACKING_PASSWORD"]
            self.secret_key = values.get("CNNLAB_TEAM_SECRET_KEY") or secrets.token_urlsafe(32)
        else:
            self.pg_password, self.admin_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
            self.secret_key = secrets.token_urlsafe(32)
        lines = [f"# cnnlab team: load into a shell with  set -a; . {self.secrets_path}; set +a",
                 *(f"{k}={v}" for k, v in self.client_env().items()),
                 f"CNNLAB_TEAM_SECRET_KEY={self.secret_key}"]
        fd = os.open(self.secrets_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.chmod(self.secrets_path, 0o600)

    # ---- PostgreSQL

    @property
    def pg_dir(self) -> Path:
        return self.dir / "pg"

    def init_postgres(self) -> None:
        """initdb on first start: role cnnlab, its password from a file only postgres reads, then deleted."""
        if (self.pg_dir / "PG_VERSION").exists():
            return
        self.pg_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _give_to_postgres(self.pg_dir)
        if subprocess.run(as_postgres(["test", "-w", str(self.pg_dir)]), capture_output=True).returncode != 0:
            raise CnnlabError(f"PostgreSQL runs as user postgres (it refuses root), which cannot reach {self.pg_dir}: "
                              "a directory above it is private. Give `cnnlab team up --dir` a directory every user "
                              "can reach, e.g. /var/tmp/cnnlab-team.")
        pwfile = self.dir / ".pgpass.init"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.pg_password + "\n")
        _give_to_postgres(pwfile)
        try:
            out = subprocess.run(as_postgres([pg_program("initdb"), "-D", str(self.pg_dir), "-U", ROLE,
                                              "--auth=scram-sha-256", f"--pwfile={pwfile}", "-E", "UTF8",
                                              "--locale=C"]), capture_output=True, text=True)
        finally:
            pwfile.unlink()
        if out.returncode != 0:
            raise CnnlabError(f"initdb failed in {self.pg_dir}: {(out.stderr or out.stdout).strip()[-800:]}")
        if self.host not in LOCAL_HOSTS:  # other machines may connect, still only with the password
            with open(self.pg_dir / "pg_hba.conf", "a") as f:
                f.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")

    def postgres_cmd(self) -> List[str]:
        listen = "127.0.0.1" if self.host in LOCAL_HOSTS else "*"
        return as_postgres([pg_program("postgres"), "-D", str(self.pg_dir), "-p", str(self.pg_port),
                            "-c", f"listen_addresses={listen}", "-c", "unix_socket_directories=",
                            "-c", "max_connections=200"])

    def connect(self, dbname: str = "postgres", timeout: int = 2):
        return _driver().connect(host="127.0.0.1", port=self.pg_port, user=ROLE, password=self.pg_password,
                                 dbname=dbname, connect_timeout=timeout, autocommit=True)

    def postgres_ready(self) -> bool:
        try:
            self.connect().close()
            return True
        except Exception:
            return False

    def create_databases(self) -> None:
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT datname FROM pg_database")
                have = {row[0] for row in cur.fetchall()}
                for name in ("mlflow", "optuna"):
                    if name not in have:
                        cur.execute(f"CREATE DATABASE {name}")
        finally:
            conn.close()

    # ---- MLflow

    def mlflow_cmd(self) -> List[str]:
        return [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", self.host,
                "--port", str(self.port), "--backend-store-uri",
                f"postgresql://{ROLE}@127.0.0.1:{self.pg_port}/mlflow",
                "--artifacts-destination", str(self.dir / "artifacts"), "--workers", "2"]

    def mlflow_env(self) -> Dict[str, str]:
        config = self.dir / "basic_auth.ini"
        _private(config).write_text("[mlflow]\ndefault_permission = READ\n"
                                    f"database_uri = sqlite:///{_private(self.dir / 'auth.db')}\n"
                                    f"admin_username = {ADMIN}\n"
                                    "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                                    "auth_cache_max_size = 1000\nauth_cache_ttl_seconds = 60\n")
        return {**os.environ, "PGPASSWORD": self.pg_password, "MLFLOW_AUTH_CONFIG_PATH": str(config),
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.admin_password, "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key,
                "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}

    def mlflow_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    # ---- the state file that `status` and `down` read

    @property
    def state_path(self) -> Path:
        return self.dir / "team.json"


def _private(path: Path) -> Path:
    """`path` as a file only its owner reads (the password hashes of auth.db, the auth config): made so before
    anything is written in it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)
    return path


def read_env(path: Path) -> Dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


class Server:
    """One server process under cnnlab.ui's guard (its own process group, gone when `team up` goes)."""

    def __init__(self, name: str, cmd: List[str], log: Path, ready, env: Optional[Dict[str, str]] = None,
                 shutdown: Optional[List[str]] = None):
        self.name, self.cmd, self.log, self.ready, self.env = name, cmd, log, ready, env
        self.shutdown = shutdown  # a command that stops it cleanly and quickly, before the guard's SIGTERM
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 120) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "cnnlab.ui", str(os.getpid()), *self.cmd],
                                         start_new_session=True, stdout=log, stderr=log, env=self.env)
        deadline = time.time() + timeout
        while not self.ready():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                tail = self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""
                raise CnnlabError(f"{self.name} did not start (see {self.log}):\n{tail.strip()}")
            time.sleep(0.3)

    def stopped(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def stop(self) -> None:
        if self.proc is not None:
            if self.shutdown and self.proc.poll() is None:
                subprocess.run(self.shutdown, capture_output=True, timeout=60)
            stop_group(self.proc, grace=15)  # the guard stops the server's group, then exits
            self.proc.wait()


# ---------------------------------------------------------------- the commands


def _announce(team, host: str, port: int, pg_port: int) -> None:
    """Record that the team is up (and whose process holds it), and print how workers reach it."""
    from .record import owner

    team.state_path.write_text(json.dumps({"owner": owner(), "host": host, "port": port, "pg_port": pg_port,
                                           "tracking_uri": team.tracking_uri, "storage": team.storage,
                                           "started": time.time()}, indent=1) + "\n")
    print(f"team up in {team.dir}\n  MLflow server  {team.tracking_uri}  (user {ADMIN})\n"
          f"  Optuna storage {team.storage}\n"
          f"  credentials    {team.secrets_path}  (mode 600)\n"
          f"On each worker: set -a; . {team.secrets_path}; set +a\n"
          "  cnnlab sweep sweep=exercise --strategy optuna --name lab1     # the first\n"
          "  cnnlab sweep --join lab1 --workers 2                          # any number more\n"
          "(Ctrl-C or `cnnlab team down` stops both servers)", flush=True)


def _keep_running(servers) -> None:
    """Until a signal: a server that stopped comes back on its port."""
    while True:
        for server in servers:
            if server.stopped():
                print(f"{server.name} stopped (exit code {server.proc.returncode}): starting it again",
                      file=sys.stderr, flush=True)
                server.start()
        time.sleep(1)


def up(directory: Optional[Path] = None, host: str = "127.0.0.1", port: int = MLFLOW_PORT, pg_port: int = PG_PORT,
       ready=None) -> int:
    """Start both servers, print how workers reach them, keep them running until stopped. Returns an exit code."""
    from .record import owner, owner_alive

    _driver()
    team = Team(team_dir(directory).absolute(), host, port, pg_port)
    running = _state(team)
    if running is not None and owner_alive(running["owner"], None):
        raise CnnlabError(f"The team in {team.dir} is already up (process {running['owner'].split()[1]}): "
                          "`cnnlab team status` shows it, `cnnlab team down` stops it.")
    for p in (port, pg_port):
        _check_port("127.0.0.1" if host in LOCAL_HOSTS else host, p)
    if host not in LOCAL_HOSTS:
        print(f"warning: binding {host}: any machine that reaches this one can try the servers' passwords; keep "
              f"{team.dir / 'secrets.env'} private and the network trusted.", file=sys.stderr)
    team.dir.mkdir(parents=True, exist_ok=True)
    team.load_or_make_secrets()
    team.init_postgres()
    # SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client: pg_ctl's fast one does not
    fast_stop = as_postgres([pg_program("pg_ctl"), "stop", "-D", str(team.pg_dir), "-m", "fast", "-w", "-t", "30"])
    servers = [Server("PostgreSQL", team.postgres_cmd(), team.dir / "postgres.log", team.postgres_ready,
                      shutdown=fast_stop),
               Server("The MLflow server", team.mlflow_cmd(), team.dir / "mlflow.log", team.mlflow_ready,
                      team.mlflow_env())]

    def run() -> int:
        try:
            servers[0].start()
            team.create_databases()
            (team.dir / "artifacts").mkdir(mode=0o700, exist_ok=True)  # read through the server, whose auth applies
            os.chmod(team.dir / "artifacts", 0o700)
            servers[1].start()
            _announce(team, host, port, pg_port)
            if ready is not None:
                ready(team)
            _keep_running(servers)
        finally:
            for server in reversed(servers):
                server.stop()
            if team.state_path.exists() and (_state(team) or {}).get("owner") == owner():
                team.state_path.unlink()

    return signals.foreground(run)


def _state(team: Team) -> Optional[dict]:
    try:
        return json.loads(team.state_path.read_text())
    except (OSError, ValueError):
        return None


def _running(directory: Optional[Path]) -> tuple:
    """(Team, its state) when `team up` runs for `directory`; CnnlabError saying so when it does not."""
    from .record import owner_alive

    team = Team(team_dir(directory).absolute())
    state = _state(team)
    if state is None:
        raise CnnlabError(f"No team is up for {team.dir} (no team.json there): start one with `cnnlab team up`.")
    if not owner_alive(state["owner"], None):
        raise CnnlabError(f"The team in {team.dir} is not up: its process ({state['owner'].split()[1]}) is gone. "
                          "Start it again with `cnnlab team up` (runs and trials are kept).")
    team.host, team.port, team.pg_port = state["host"], state["port"], state["pg_port"]
    return team, state


def status(directory: Optional[Path] = None) -> str:
    team, state = _running(directory)
    pg = _answers("127.0.0.1", team.pg_port)
    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(state["started"]))
    return (f"team up in {team.dir} (process {state['owner'].split()[1]}, since {since})\n"
            f"  MLflow server  {state['tracking_uri']}  {'answering' if team.mlflow_ready() else 'NOT answering'}\n"
            f"  Optuna storage {state['storage']}  {'answering' if pg else 'NOT answering'}\n"
            f"  credentials    {team.secrets_path}")


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def down(directory: Optional[Path] = None, timeout: float = 60) -> str:
    """Stop `team up` (by the PID it recorded, checked against its start time), which stops both servers."""
    team, state = _running(directory)
    pid = int(state["owner"].split()[1])
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if _state(team) is None:
            return f"team in {team.dir} stopped"
        time.sleep(0.3)
    raise CnnlabError(f"`cnnlab team up` (process {pid}) did not stop within {timeout:.0f} s; see "
                      f"{team.dir / 'postgres.log'} and {team.dir / 'mlflow.log'}.")
