"""Discrete-event simulation of pipelines sharing a pool, driving the live scheduler's core in
virtual time (:mod:`.driver`): the reference framework's pipelines (:mod:`.reference`)."""
