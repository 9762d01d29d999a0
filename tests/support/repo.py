"""Where the repository and the configs it ships are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIMULATOR_CONFIG = REPO / "config" / "simulator.toml"
EXAMPLE_CONFIG = REPO / "config" / "refreshd.example.toml"
