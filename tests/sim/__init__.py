"""Deterministic simulation of the whole pipeline: one seed is one random schedule of many jobs
with faults between any two side effects; ``python -m tests.sim --seed N`` replays one."""
