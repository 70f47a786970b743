"""Converters from real, public contact-centre data sets to canonical interaction events."""
