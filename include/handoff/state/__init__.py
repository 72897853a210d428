"""Durable state: watermarks, deal snapshots, onboarding and the outbox."""

from handoff.state.store import StateStore

__all__ = ["StateStore"]
