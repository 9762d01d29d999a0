"""The VICIdial API simulator: pure rules (also the tests' oracle), faults, loopback HTTP."""

from refreshd.simulator.faults import FAULT_MODES
from refreshd.simulator.http import API_PATH, LOGIN_PAGE_PATH, Simulator
from refreshd.simulator.rules import SimServer, SimUser, Vicidial
from refreshd.simulator.serve import serve
from refreshd.simulator.settings import load_simulator_config

__all__ = [
    "API_PATH",
    "FAULT_MODES",
    "LOGIN_PAGE_PATH",
    "SimServer",
    "SimUser",
    "Simulator",
    "Vicidial",
    "load_simulator_config",
    "serve",
]
