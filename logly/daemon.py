"""`logly daemon`: follow the configured logs and store their events, as a systemd service.

One loop: poll every follower (woken by inotify through watchdog, or a timer where inotify is
not available), flush batches that are full or old enough, report status. Each flush commits a
file's events with its offset, so SIGKILL at any moment loses nothing and repeats nothing.
SIGTERM flushes and exits; SIGHUP re-reads the configuration and the rules between batches.
A store that cannot be written (locked, disk full, read-only) keeps the daemon in place:
reading pauses once the pending batch is full, the error is reported, and writes are retried
with backoff until they succeed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from logly.config import Config, SourceSpec, load_config
from logly.parsers.rules import RuleSet
from logly.sdnotify import Notifier
from logly.sources.follow import Follower, expand
from logly.sources.journal import JournalFollower
from logly.store.sqlite import HOOK_FAILURES, BatchHook, SQLiteStore, utcnow

log = logging.getLogger("logly.daemon")


@dataclass
class DaemonOptions:
    config_path: Path | None = None
    db: Path | None = None
    follow: list[SourceSpec] = field(default_factory=list)  # replaces config sources if given
    from_start: bool = False
    tracer: bool = True
    scheduler: bool = True  # aggregates, metrics and retention in the background


class Daemon:
    def __init__(self, opts: DaemonOptions, hooks: list[BatchHook] | None = None) -> None:
        self.opts = opts
        self.notifier = Notifier()
        self.wake = threading.Event()
        self.stopping = False
        self.reload_requested = False
        self.followers: dict[str, Follower | JournalFollower] = {}
        self.config = self._load_config()
        self.store = SQLiteStore(self.config.db)
        self.store.init()
        self.rules = RuleSet.load(self.config.rules_dirs)
        if hooks is None:
            from logly.tracer.stages import build_hooks

            hooks = build_hooks(self.config)
        self.hooks = hooks
        self.error: str | None = None
        self.started = time.time()
        self.stored = 0
        self._observer: Any = None
        self.scheduler: Any = None
        self.tracer: Any = None
        self.linker: BatchHook | None = None
        self._tracer_lock = threading.Lock()
        self.tracer_error: str | None = None

    def _load_config(self) -> Config:
        cfg = load_config(self.opts.config_path)
        if self.opts.db is not None:
            cfg.db = self.opts.db
        if self.opts.follow:
            cfg.sources = list(self.opts.follow)
        # absolute paths, now: libbcc changes the working directory for a moment while it
        # compiles, and followers are also made while it does (SQLiteStore sees to its own)
        cfg.sources = [
            dataclasses.replace(s, directory=s.directory and os.path.abspath(s.directory))
            if s.type == "journal" else dataclasses.replace(s, path=os.path.abspath(s.path))
            for s in cfg.sources]
        return cfg

    # ---- lifecycle ----------------------------------------------------------------------------
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)

    def _on_term(self, *_: Any) -> None:
        self.stopping = True
        self.wake.set()

    def _on_hup(self, *_: Any) -> None:
        self.reload_requested = True
        self.wake.set()

    def _start_scheduler(self) -> None:
        if not self.opts.scheduler:
            return
        from logly.scheduler import start_scheduler, utc_now
        from logly.tracer.reputation_jobs import make_decay_job

        extra = {}
        if (decay := make_decay_job(self.config)) is not None:
            extra["reputation_decay"] = (decay, {"trigger": "cron", "minute": 17})
        # its own connections: jobs take short write transactions between our batches
        self.scheduler = start_scheduler(SQLiteStore(self.config.db), self.config, utc_now,
                                         extra_jobs=extra)

    def _stop_scheduler(self) -> None:
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
            self.scheduler = None

    def _start_tracer(self) -> None:
        """Attach the kernel tracer in the background: compiling the probes takes seconds, and
        following must not wait for it (lines read meanwhile just get no kernel context). The
        linker goes last in self.hooks (which the followers share), so the correlation hook's
        trace_id is there when it links an event."""
        if not self.opts.tracer:
            return
        from logly.tracer.ebpf import open_tracer, parse_settings
        from logly.tracer.link import make_hook

        settings = parse_settings(self.config.sections.get("tracer", {}))  # errors: at start
        if not settings.enabled:
            return

        def attach() -> None:
            try:
                tracer = open_tracer(settings)  # warns once and falls back to /proc if it must
            except Exception as exc:  # [tracer] mode = "ebpf" and it cannot run here
                log.error("tracer: %s; stopping", exc)
                self.tracer_error = str(exc)
                self.stopping = True
                self.wake.set()
                return
            linker = make_hook(tracer, keep_seconds=settings.keep_seconds,
                               local_only=settings.link_host)
            with self._tracer_lock:
                if self.stopping:
                    tracer.stop()
                    return
                self.tracer, self.linker = tracer, linker
                self.hooks.append(linker)

        threading.Thread(target=attach, name="tracer-attach", daemon=True).start()

    def run(self) -> int:
        # followers first: a file seen for the first time is followed from where it ends now,
        # not from where it ends after the probes have compiled (seconds); they share
        # self.hooks, so the tracer's linker reaches them
        self._sync_followers()
        self._start_tracer()
        self._start_observer()
        self._start_scheduler()
        self.notifier.send(ready=1, status=self._status_line())
        log.info("following %d files into %s", len(self.followers), self.store.path)
        last_status = last_ping = last_glob = 0.0
        backoff = backoff_until = 0.0
        d = self.config.daemon
        while not self.stopping:
            if self.reload_requested:
                self._reload()
            now = time.monotonic()
            if now - last_glob >= d.glob_seconds:
                self._sync_followers()
                last_glob = now
            max_pending = d.batch_lines * 4
            read = 0
            if backoff == 0.0 or now >= backoff_until:
                try:
                    for f in self.followers.values():
                        read += f.poll(max_pending)
                    for f in self.followers.values():
                        if f.due(d.batch_lines, d.batch_seconds):
                            self.stored += f.flush()
                    if self.error:
                        log.info("store writable again; resumed")
                    self.error, backoff = None, 0.0
                except (OperationalError, OSError) as exc:
                    backoff = min(30.0, max(0.5, backoff * 2))
                    backoff_until = time.monotonic() + backoff
                    self.error = _short(exc)
                    log.error("cannot store events (retry in %.1fs): %s", backoff, self.error)
                    self.notifier.send(status=f"Store error, retrying: {self.error}")
            if now - last_status >= d.status_seconds:
                self._report_status()
                last_status = now
            if self.notifier.watchdog_interval and now - last_ping >= \
                    self.notifier.watchdog_interval:
                self.notifier.send(watchdog=1)
                last_ping = now
            if not read or self.error:  # idle, or waiting out a store error
                self.wake.wait(d.poll_seconds)
                self.wake.clear()
        return self._shutdown()

    def _shutdown(self) -> int:
        self.notifier.send(stopping=1, status="Flushing and stopping")
        code = 1 if self.tracer_error else 0
        try:
            for f in self.followers.values():
                f.flush()
        except (OperationalError, OSError) as exc:
            log.error("could not store the last batch (it will be re-read): %s", _short(exc))
            code = 1
        self._stop_scheduler()
        self._report_status()
        with self._tracer_lock:  # an attach still compiling sees `stopping` and gives up
            if self.tracer is not None:
                self.tracer.stop()
        for f in self.followers.values():
            f.close()
        if self._observer is not None:
            self._observer.stop()
        log.info("stopped")
        return code

    def _reload(self) -> None:
        self.reload_requested = False
        try:
            cfg = self._load_config()
            rules = RuleSet.load(cfg.rules_dirs)
            from logly.tracer.stages import build_hooks

            new_hooks = build_hooks(cfg)
        except Exception as exc:  # a bad reload keeps the running configuration
            log.error("reload failed, keeping the current configuration: %s", exc)
            self.notifier.send(status=f"Reload failed: {_short(exc)}")
            return
        self.notifier.send(reloading=1, monotonic_usec=int(time.monotonic() * 1e6))
        for f in self.followers.values():
            f.flush()
        self.config, self.rules = cfg, rules
        # followers share this list; the tracer's linker stays, last
        self.hooks[:] = new_hooks + ([self.linker] if self.linker is not None else [])
        for f in self.followers.values():
            f.set_rules(rules)
        self._sync_followers()
        self._stop_scheduler()  # new [scheduler]/[retention] settings take effect now
        self._start_scheduler()
        self.notifier.send(ready=1, status=self._status_line())
        log.info("configuration and rules reloaded")

    def _sync_followers(self) -> None:
        wanted: dict[str, SourceSpec] = {}
        for spec in self.config.sources:
            if spec.type == "journal":
                wanted[spec.journal_query().location] = spec
                continue
            for path in expand(spec.path):
                wanted[path] = spec
        for path in list(self.followers):
            if path not in wanted:
                f = self.followers.pop(path)
                f.flush()
                f.close()
        for path, spec in wanted.items():
            if path not in self.followers and spec.type == "journal":
                self.followers[path] = JournalFollower(
                    self.store, self.rules, spec.journal_query(),
                    from_start=self.opts.from_start, hooks=self.hooks)
            elif path not in self.followers:
                # a file that appears under a glob after start is new: read all of it
                is_new = bool(self.followers) and spec.path != path
                self.followers[path] = Follower(
                    self.store, self.rules, path,
                    from_start=self.opts.from_start or is_new,
                    tz=self.config.tzinfo(), hooks=self.hooks)

    def _start_observer(self) -> None:
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:  # pragma: no cover - a dependency; polling still works
            return
        wake = self.wake

        class _Wake(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        dirs = {str(Path(s.path).parent) for s in self.config.sources if s.type != "journal"}
        try:
            obs = Observer()
            for d in dirs:
                if Path(d).is_dir():
                    obs.schedule(_Wake(), d, recursive=False)
            obs.daemon = True
            obs.start()
            self._observer = obs
        except OSError as exc:  # inotify limits: the poll timer carries on alone
            log.warning("inotify unavailable (%s); polling every %.2fs", exc,
                        self.config.daemon.poll_seconds)

    # ---- status -------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        up = max(1e-9, time.time() - self.started)
        return {
            "pid": __import__("os").getpid(),
            "started": self.started,
            "updated": utcnow(),
            "stored_events": self.stored,
            "events_per_min": round(self.stored / up * 60, 1),
            "error": self.error,
            "tracer": self.tracer.stats() if self.tracer is not None else {"mode": "off"},
            "enrich_failures": dict(HOOK_FAILURES),
            "files": [self._file_status(p, f) for p, f in sorted(self.followers.items())],
        }

    @staticmethod
    def _file_status(path: str, f: Any) -> dict[str, Any]:
        out = {"path": path, "lag_bytes": f.lag_bytes(), "pending": f.pending_lines(),
               "events": f.events}
        if isinstance(f, Follower):  # a file's bytes (the journal hands over decoded text)
            out["invalid_utf8"] = f.stats.invalid_utf8
            out["truncated"] = f.stats.truncated
        return out

    def _status_line(self) -> str:
        s = self.status()
        lag = sum(f["lag_bytes"] for f in s["files"])
        line = (f"Following {len(s['files'])} files, {s['events_per_min']:,.0f} events/min, "
                f"lag {lag:,} bytes")
        return f"{line}; store error: {self.error}" if self.error else line

    def _report_status(self) -> None:
        self.notifier.send(status=self._status_line())
        with contextlib.suppress(OperationalError, OSError):
            self.store.set_metadata("daemon_status", json.dumps(self.status()))


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__


def run_daemon(opts: DaemonOptions, hooks: list[BatchHook] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # apscheduler narrates every job at INFO; the journal only needs its warnings
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    daemon = Daemon(opts, hooks)
    daemon.install_signals()
    return daemon.run()
