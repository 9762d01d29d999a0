"""SIGHUP: the config read again and applied, or refused with the running one kept; the
settings that only a restart changes kept at their running value, and said."""

from __future__ import annotations

import gc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from refreshd.clock import Clock
from refreshd.config import (
    Config,
    ConfigError,
    config_warnings,
    grouped_warnings,
    load_config,
    resolve_passwords,
)
from refreshd.logs import redactor
from refreshd.metrics import Metrics
from refreshd.scheduler import Scheduler
from refreshd.sdnotify import Notifier
from refreshd.verify.watch import Verification

__all__ = ["Reloading"]

# Restart-only settings: the daemon keeps the running value and says so on reload.
_RESTART_ONLY = ("state_path", "metrics_listen", "max_concurrency")


class Reloading:
    """The daemon's reload, apart from its process life (daemon.Daemon has the attributes)."""

    scheduler: Scheduler | None
    notifier: Notifier
    metrics: Metrics
    log: Any
    config_path: Path
    environ: Mapping[str, str]
    verification: Verification | None
    clock: Clock

    def _reload(self) -> None:
        assert self.scheduler is not None
        self.notifier.reloading()
        try:
            try:
                config = self._load_config()
            except ConfigError as err:
                self.metrics.config_reloads.labels("rejected").inc()
                self.log.error(
                    "config.rejected",
                    path=str(self.config_path),
                    errors=err.errors,
                    keeping="the running config",
                )
                return
            running = self.scheduler.config
            config = self._keep_restart_only(running, config)
            redactor.set_secrets(running.secrets() | config.secrets())
            try:
                changes = self.scheduler.reload(config)
            except Exception as err:
                # Validation passed but applying failed (a bug, or the state file): keep
                # running on what is applied rather than die; the error says what to fix.
                self.metrics.config_reloads.labels("rejected").inc()
                self.log.exception("config.rejected", path=str(self.config_path), error=str(err))
                return
            redactor.set_secrets(config.secrets())
            if self.verification is not None:
                self.verification.configure(config)
            # The new config lives on too (see _serve); collected first, so that the
            # reload's own cyclic garbage is not kept forever.
            gc.collect()
            gc.freeze()
            self.metrics.config_reloads.labels("ok").inc()
            self._warn(config)
            self.log.info(
                "config.reloaded",
                path=str(self.config_path),
                servers=len(config.servers),
                added=changes["added"],
                removed=changes["removed"],
                changed=changes["changed"],
            )
        finally:
            self.notifier.ready()

    def _warn(self, config: Config) -> None:
        """Each distinct warning once, at start and on each reload, with how many places
        it applies to (not once per server: a fleet would bury every other line)."""
        for warning, places in grouped_warnings(config_warnings(config, now=self.clock.now())):
            self.log.warning("config.warning", warning=warning, places=places)

    def _load_config(self) -> Config:
        """The config file with its passwords read: the daemon calls VICIdial."""
        config = load_config(self.config_path, self.environ)
        return resolve_passwords(config, environ=self.environ, path=self.config_path, urls=True)

    def _keep_restart_only(self, running: Config, new: Config) -> Config:
        kept = {}
        for key in _RESTART_ONLY:
            old_value, new_value = getattr(running.daemon, key), getattr(new.daemon, key)
            if old_value != new_value:
                kept[key] = old_value
                self.log.warning(
                    "config.restart_needed",
                    key=f"daemon.{key}",
                    running=str(old_value),
                    configured=str(new_value),
                )
        update: dict[str, object] = {"daemon": new.daemon.model_copy(update=kept)} if kept else {}
        if running.state != new.state:  # the store stays the one opened at start
            was, now = (c.state.url if c.state else "none" for c in (running, new))
            self.log.warning("config.restart_needed", key="state", running=was, configured=now)
            update["state"] = running.state
        return new.model_copy(update=update) if update else new
