"""Consent of individuals to the processing of their personal data."""
