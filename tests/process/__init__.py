"""The real `refreshd` command as a child process: daemon, service, CLI, crashes, deployment."""
