"""Handlers hold the serving logic; HTTP routers and the gRPC servicer only call them."""
