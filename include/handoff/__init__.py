"""Handoff Autopilot: the business logic, free of Airflow."""
