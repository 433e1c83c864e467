"""Shared helpers of the benchmarks: a private broker, measured subprocesses, results.

Every benchmark measures the process that does the work, not the one that orchestrates it, so each
contender runs in its own process and its peak RSS, CPU time and wall time come from the kernel
(``wait4``). A contender is either a Python function of this repository run with any interpreter
(``run_function``) or any command that writes its result JSON to the path in ``BENCH_RESULT``
(``run_measured``).

The child side of ``run_function`` is this module itself::

    python -m bench.common call module:function   (keyword arguments as JSON on stdin)
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
KAFKA_SCRIPT = REPO / "scripts" / "kafka.sh"
#: Environment variable naming the file a measured child writes its result JSON to.
RESULT_ENV = "BENCH_RESULT"

MB = 1_000_000  # throughput is reported in decimal megabytes
MIB = 1024 * 1024
GIB = 1024 * MIB


# -- ports and the broker ----------------------------------------------------------------------------


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(pair: bool = False, avoid: Sequence[int] = (9092, 9093)) -> int:
    """A free TCP port on 127.0.0.1 (with ``pair``: one whose successor is free too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in avoid or (pair and (port + 1 in avoid or port + 1 > 65535 or not port_is_free(port + 1))):
            continue
        return port
    raise RuntimeError("no free port found")


class BrokerBusy(RuntimeError):
    """The data folder chosen for a new broker is in use by a running one."""


@dataclass
class Broker:
    """A single-node Kafka started through ``scripts/kafka.sh`` on a port and data folder of its own."""

    port: int
    data_dir: Path
    heap_opts: str = "-Xms512m -Xmx1g"
    started: bool = False
    owned: bool = False

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "KAFKA_PORT": str(self.port), "KAFKA_CONTROLLER_PORT": str(self.port + 1),
                "KAFKA_DATA_DIR": str(self.data_dir), "KAFKA_HEAP_OPTS": self.heap_opts}

    def _script(self, action: str) -> None:
        subprocess.run([str(KAFKA_SCRIPT), action], env=self.env, check=True)

    def up(self, fresh: bool = True) -> Broker:
        live = self.live_pid()
        if live is not None:  # another benchmark's broker: never wipe or stop it
            raise BrokerBusy(f"{self.data_dir} belongs to a running broker (pid {live})")
        self.owned = True  # from here on this folder is ours to stop and clean up
        if fresh and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.started = True  # from here on, down() must run even if up() fails half-way
        self._script("up")
        return self

    def down(self) -> None:
        if self.started and self.owned:
            self._script("down")
            self.started = False

    def live_pid(self) -> int | None:
        pid = self.pid()
        return pid if pid is not None and Path(f"/proc/{pid}").exists() else None

    def pid(self) -> int | None:
        try:
            return int((self.data_dir / "broker.pid").read_text().strip())
        except (FileNotFoundError, ValueError):
            return None


@contextlib.contextmanager
def kafka_broker(data_root: Path | None = None, port: int | None = None, fresh: bool = True,
                 heap_opts: str = "-Xms512m -Xmx1g", attempts: int = 3) -> Iterator[Broker]:
    """Start a private broker (never on 9092), yield it, and stop it however the block ends.

    Its data lives in ``<data_root>/<port>-<pid>`` (default .local/bench-kafka/); several benchmarks
    may run at once, each with its own port and folder, so touch no other folder there. A start that
    fails (e.g. another process took the port meanwhile) is retried on a new free port. SIGTERM is
    turned into an exception for the duration, so a killed benchmark still stops its broker.
    """
    if port in (9092, 9093):
        raise ValueError("port 9092 (and its controller port 9093) belong to the shared broker")
    root = data_root or REPO / ".local" / "bench-kafka"

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term) if threading.current_thread() is threading.main_thread() \
        else None
    broker: Broker | None = None
    try:
        for attempt in range(1, attempts + 1):
            chosen = port or free_port(pair=True)
            # A folder per port and process: two benchmarks that race for one port never share a folder,
            # so neither can stop (kafka.sh down reads the folder's pid file) or wipe the other's broker.
            broker = Broker(chosen, root / f"{chosen}-{os.getpid()}", heap_opts)
            try:
                broker.up(fresh=fresh)
                break
            except (subprocess.CalledProcessError, BrokerBusy):
                broker.down()
                if fresh and broker.owned:
                    shutil.rmtree(broker.data_dir, ignore_errors=True)
                if port or attempt == attempts:
                    raise
                print(f"bench: broker did not start on port {chosen}; trying another port", file=sys.stderr)
        assert broker is not None
        yield broker
    finally:
        try:
            if broker is not None:
                broker.down()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if fresh and broker is not None and broker.owned:
                shutil.rmtree(broker.data_dir, ignore_errors=True)


# -- measured processes ------------------------------------------------------------------------------


@dataclass
class Measured:
    """What the kernel says about one finished child, plus the result it wrote."""

    argv: list[str]
    returncode: int
    wall_s: float  # from fork to exit, interpreter start-up included
    #: The child's own high-water RSS (VmHWM): as the child reported it at its end, else as sampled.
    peak_rss_bytes: int
    user_s: float
    sys_s: float
    #: Where peak_rss_bytes came from: "reported" (exact) or "sampled" (every 20 ms: a lower bound).
    peak_rss_source: str = "sampled"
    #: VmHWM as sampled from /proc/<pid>/status while the child ran.
    sampled_peak_rss_bytes: int = 0
    #: The kernel's ru_maxrss from wait4. NOT the child's own peak: Linux carries the parent's
    #: high-water RSS over fork+exec into it, so a child can never look smaller than its parent was.
    ru_maxrss_bytes: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    stdout_tail: str = ""
    stderr_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def check(self) -> Measured:
        if not self.ok:
            raise RuntimeError(
                f"{' '.join(self.argv[:4])} ... exited with {self.returncode}\n--- stderr (tail) ---\n"
                f"{self.stderr_tail}\n--- stdout (tail) ---\n{self.stdout_tail}"
            )
        return self

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("stdout_tail"), d.pop("stderr_tail")
        d["peak_rss_mib"] = round(self.peak_rss_bytes / MIB, 1)
        return d


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ""
    return data[-limit:].decode("utf-8", "replace")


def vmhwm_bytes(pid: int | str = "self") -> int:
    """Peak resident set size (VmHWM) of a live process's current address space; 0 if unknown.

    Unlike ru_maxrss it starts from zero at exec, so it is the process's own peak.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _sample_hwm(pid: int, stop: threading.Event, out: list[int], every_s: float = 0.02) -> None:
    while not stop.is_set():
        value = vmhwm_bytes(pid)
        if value:
            out[0] = max(out[0], value)
        stop.wait(every_s)


def run_measured(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None,
                 stdin: bytes | None = None, timeout_s: float = 3600.0, log_dir: Path | None = None) -> Measured:
    """Run ``argv`` to completion; return its peak RSS, CPU and wall time, and the JSON it wrote.

    The child finds the path for its result JSON in ``$BENCH_RESULT``; stdout and stderr go to files
    (in ``log_dir`` if given, kept; else a temporary folder) so a chatty child cannot block on a pipe.
    A child that puts its own final VmHWM into the result as ``vmhwm_bytes`` (``run_function``
    children do) gets an exact peak RSS; any other child's peak is sampled from /proc every 20 ms.
    """
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        logs = log_dir or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        result_path, out_path, err_path = Path(tmp) / "result.json", logs / "stdout.log", logs / "stderr.log"
        child_env = {**(env if env is not None else os.environ), RESULT_ENV: str(result_path)}
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            started = time.perf_counter()
            proc = subprocess.Popen(list(argv), env=child_env, cwd=cwd, stdout=out, stderr=err,
                                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                    start_new_session=True)
            if stdin is not None:
                assert proc.stdin is not None
                proc.stdin.write(stdin)
                proc.stdin.close()
            timer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
            timer.start()
            sampled, stop_sampling = [0], threading.Event()
            sampler = threading.Thread(target=_sample_hwm, args=(proc.pid, stop_sampling, sampled), daemon=True)
            sampler.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)  # reaps it: rusage of exactly this child
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                raise
            finally:
                timer.cancel()
                stop_sampling.set()
                sampler.join()
            wall = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        result: dict[str, Any] = {}
        if result_path.exists() and result_path.stat().st_size:
            result = json.loads(result_path.read_text())
        reported = int(result.get("vmhwm_bytes") or 0)
        return Measured(list(argv), proc.returncode, wall, reported or sampled[0], usage.ru_utime, usage.ru_stime,
                        "reported" if reported else "sampled", sampled[0], usage.ru_maxrss * 1024,
                        result, _tail(out_path), _tail(err_path))


def run_function(target: str | Callable[..., Any], kwargs: Mapping[str, Any] | None = None, *,
                 python: str | os.PathLike[str] = sys.executable, env: Mapping[str, str] | None = None,
                 timeout_s: float = 3600.0, log_dir: Path | None = None) -> Measured:
    """Call ``module:function(**kwargs)`` in a fresh interpreter; its return value (JSON) is ``result``.

    ``kwargs`` and the return value must be JSON-serialisable. The child also reports its RSS just
    before the call (``rss_before_call_bytes``: the interpreter and imports) and the call's own wall
    time (``call_s``), so start-up cost can be told apart from the work.
    """
    if callable(target):
        module = target.__module__
        if module == "__main__":  # run as `python -m bench.x`: the child must import it by its real name
            spec = getattr(sys.modules["__main__"], "__spec__", None)
            if spec is None:
                raise ValueError(f"{target!r} lives in a script, not an importable module: name it 'module:function'")
            module = spec.name
        target = f"{module}:{target.__qualname__}"
    child_env = dict(env if env is not None else os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child_env.get("PYTHONPATH", "")) if p)
    return run_measured([str(python), "-m", "bench.common", "call", target], env=child_env, cwd=REPO,
                        stdin=json.dumps(dict(kwargs or {})).encode(), timeout_s=timeout_s, log_dir=log_dir)


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def write_child_result(result: Mapping[str, Any]) -> None:
    """For a measured child: write its result (and its own peak RSS) where ``run_measured`` looks for it."""
    path = os.environ.get(RESULT_ENV)
    if path:
        Path(path).write_text(json.dumps({**result, "vmhwm_bytes": vmhwm_bytes()}, default=str))


def _child_call(target: str) -> int:
    module_name, _, func_name = target.partition(":")
    kwargs = json.loads(sys.stdin.read() or "{}")
    func = importlib.import_module(module_name)
    for part in func_name.split("."):
        func = getattr(func, part)
    rss_before = current_rss_bytes()
    started = time.perf_counter()
    value = func(**kwargs)
    call_s = time.perf_counter() - started
    out = {"value": value, "call_s": call_s, "rss_before_call_bytes": rss_before}
    write_child_result(out)
    return 0


# -- timing and reporting ----------------------------------------------------------------------------


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``"""

    def __enter__(self) -> Stopwatch:
        self.started = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.started


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("nan")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub markdown table; ``align`` is one of l/r/c per column (default: first left, rest right)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(str(h) for h in headers) + " |",
             "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.rstrip("\n")
    except (OSError, subprocess.SubprocessError):
        return ""


def environment() -> dict[str, Any]:
    """Where a result came from: machine, interpreter, library versions, repository state."""
    info: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(), "platform": platform.platform(), "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "git_commit": _git("rev-parse", "HEAD").strip(),
        "git_dirty": [line[3:] for line in _git("status", "--porcelain").splitlines()],
    }
    with contextlib.suppress(OSError, ValueError):
        meminfo = Path("/proc/meminfo").read_text().split("\n")[0]
        info["mem_total_gib"] = round(int(meminfo.split()[1]) * 1024 / GIB, 1)
    versions = {}
    for name in ("confluent_kafka", "pyarrow", "orjson", "numpy"):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            versions[name] = getattr(module, "__version__", None) or str(module.version())
    with contextlib.suppress(ImportError):
        import confluent_kafka

        versions["librdkafka"] = confluent_kafka.libversion()[0]
    info["versions"] = versions
    return info


def write_results(name: str, data: Mapping[str, Any]) -> Path:
    """``bench/results/<name>.json`` (git-ignored), with the environment recorded alongside."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "environment": environment(), **data}, indent=2, default=str)
                    + "\n")
    return path


def fresh_dir(path: Path) -> Path:
    """Delete ``path`` if it exists and create it empty (refusing anything outside the repository)."""
    path = path.resolve()
    if REPO not in path.parents:
        raise ValueError(f"refusing to wipe {path}: not inside {REPO}")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "call":
        sys.exit(_child_call(sys.argv[2]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)


# -- machine load -----------------------------------------------------------------------------------


def cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat: to report how loaded it was."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Average number of cores the whole machine kept busy between two ``cpu_jiffies()`` readings."""
    total = after[1] - before[1]
    return round((os.cpu_count() or 1) * (after[0] - before[0]) / total, 2) if total else float("nan")


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_IMPORT_MACHINERY = ("<built-in method builtins.exec>", "<built-in method builtins.__import__>", "<module>")


def profile_summary(profiler: Any, path: str, top: int, *, sort: str = "cumulative",
                    exclude_file: str | None = None) -> list[dict[str, Any]]:
    """Save a cProfile run (``path``.pstats and a readable ``path``.txt) and return its top rows.

    Rows are ranked by ``sort`` ("cumulative" or "tottime"). The calling bench's own timing wrappers
    (``exclude_file``) and the import machinery are left out of the ranking; the time spent importing
    during the run is reported as one row of its own, so a cold import is seen and not mistaken for work.
    """
    import io
    import pstats

    profiler.dump_stats(path + ".pstats")
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("tottime").print_stats(40)
    Path(path + ".txt").write_text(text.getvalue())
    entries = stats.stats.items()  # type: ignore[attr-defined]
    items = [(k, v) for k, v in entries
             if not k[0].startswith("<frozen importlib") and k[2] not in _IMPORT_MACHINERY
             and (exclude_file is None or Path(k[0]).name != Path(exclude_file).name)]
    column = 3 if sort == "cumulative" else 2
    rows = sorted(items, key=lambda kv: kv[1][column], reverse=True)[:top]
    imports = max((v[3] for k, v in entries if k[2] == "_find_and_load"), default=0.0)
    return [{"function": "(all imports during the run)", "ncalls": "", "tottime_s": float("nan"),
             "cumtime_s": round(imports, 3)}] + [
        {"function": f"{Path(file).parent.name}/{Path(file).name}:{line}({name})" if file != "~" else name,
         "ncalls": nc, "tottime_s": round(tt, 3), "cumtime_s": round(ct, 3)}
        for (file, line, name), (_cc, nc, tt, ct, _callers) in rows]
