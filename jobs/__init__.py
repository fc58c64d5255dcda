"""Shipyard's training side: Ray Data, Ray Train and Ray Tune jobs (one module per job)."""
