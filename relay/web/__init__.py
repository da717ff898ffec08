"""The self-service enrollment pages: invitation links, app password or sign-in, Test, login."""

from relay.web.server import WebServer, run_web, start_web

__all__ = ["WebServer", "run_web", "start_web"]
