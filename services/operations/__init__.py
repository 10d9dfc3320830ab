"""Operator tooling: who may act (operator tokens), what they did (rod.operations.v1), and the
one-screen view of the chain (`rod topics`, the console, readiness, metrics).

It owns its tables (operations_*) in the operations database (ROD_OPERATIONS_DATABASE_URL,
else ROD_DATABASE_URL, else <data dir>/operations.db). To show the chain it reads the other
services' tables, read only, as operators' tools do; it changes them only through each
service's own code (a subscription's pause, a dead letter's replay).
"""
