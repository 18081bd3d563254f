"""The stream job (PyFlink): events -> rolling features -> scoring core -> Redis. Own venv."""
