"""Enrichment of stored events: reputation, process/network context, error classes, traces."""
