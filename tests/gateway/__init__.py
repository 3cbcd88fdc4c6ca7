"""An in-process live gateway (the real GatewayServer on its own event loop) over real sockets."""
