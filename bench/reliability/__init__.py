"""Fault scenarios against a real gunicorn on loopback (``python -m bench.reliability``)."""
