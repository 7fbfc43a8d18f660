"""Deployment: `Defender` (a trained workdir -> defended predictions), the HTTP server, the load
generator."""
