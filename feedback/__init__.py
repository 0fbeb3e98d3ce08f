"""Feedback: event definitions, the Kafka pipeline and the SQL feedback store.

This package holds the contracts every process shares (events, settings sections,
the store's query API). ``serving`` and ``training`` import from here, never from each
other.
"""
