"""Airflow glue for Handoff Autopilot: turn Airflow connections into ``handoff`` clients."""
