"""Shared core of training and serving: feature schema, bundle format and scoring engine."""
