"""Paired statistics over seeds and the verdicts they give, as plain data."""
