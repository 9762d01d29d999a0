"""The config of refreshd: one TOML file, with REFRESHD_ overrides, validated into a `Config`.

Reading order for a newcomer:
  load.py        `load_config` (file + environment -> `Config`), `resolve_passwords` (for
                 the commands that call VICIdial) and `ConfigError`
  models.py      the models, one per TOML table, each field's rule next to it
  fields.py      the field types and their plain-language refusals
  references.py  the rules across tables (unique names, references that exist)
  passwords.py   reading password_env / password_file, and the characters VICIdial keeps
  problems.py    a problem is a place and a message; several raised at once
  messages.py    pydantic's errors as 'place: message' lines an operator can act on
  advice.py      `config_warnings`: non-fatal advice on a valid config, and its grouping
"""

from __future__ import annotations

from refreshd.config.advice import (
    config_warnings,
    grouped_warnings,
    ignored_proxies_note,
    is_loopback_host,
)
from refreshd.config.credentials import Credentials, CredentialsConfig
from refreshd.config.databases import DatabaseConfig
from refreshd.config.load import (
    DEFAULT_CONFIG_PATH,
    ENV_PREFIX,
    ConfigError,
    default_config_path,
    load_config,
    resolve_passwords,
    validate_config,
)
from refreshd.config.models import (
    BackoffConfig,
    BlackoutConfig,
    ClientConfig,
    Config,
    DaemonConfig,
    ServerConfig,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "ENV_PREFIX",
    "BackoffConfig",
    "BlackoutConfig",
    "ClientConfig",
    "Config",
    "ConfigError",
    "Credentials",
    "CredentialsConfig",
    "DaemonConfig",
    "DatabaseConfig",
    "ServerConfig",
    "config_warnings",
    "default_config_path",
    "grouped_warnings",
    "ignored_proxies_note",
    "is_loopback_host",
    "load_config",
    "resolve_passwords",
    "validate_config",
]
