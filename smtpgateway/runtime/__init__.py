"""Running the gateway: the server's listeners and stop, the worker-process
supervisor (``runsmtp --workers``), the never-blocking log writer, glibc tuning."""
