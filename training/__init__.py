"""Offline training: from a customer table to a verified, versioned model bundle."""
