"""Conveyor: durable background jobs for Python."""
