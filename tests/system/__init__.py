"""Real processes: `runsmtp` subprocesses, HAProxy, swaks and openssl."""
