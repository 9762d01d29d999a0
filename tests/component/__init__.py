"""In-process parts on real sockets and files: client, simulator, dispatch, recorder,
state store, metrics, health, sdnotify."""
