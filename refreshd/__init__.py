"""refreshd: schedules VICIdial `server_refresh` calls inside refresh windows."""

__version__ = "0.1.0"

__all__ = ["__version__"]
