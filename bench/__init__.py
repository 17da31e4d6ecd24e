"""Presence's benchmark suite: ``scripts/bench`` runs it; see ``bench/README.md``."""
