"""Compute-to-data delivery (可用不可见): answers computed where the data lives, never rows.

``rules`` holds what an offer lets a consumer ask, ``query`` parses and validates the
consumer's question, ``engine`` runs it on the source (DuckDB over file tables, or the
source database itself) and ``disclosure`` suppresses small groups and adds calibrated
noise before the answer leaves.
"""
