"""The Celery side of the steps: the task definitions (:mod:`tasks.adapters.tts`,
:mod:`tasks.adapters.maintenance`), their base class (:mod:`tasks.adapters.base`), the job
record made when a message is received (:mod:`tasks.adapters.received`) and the per-process
wiring that builds a step's context (:mod:`tasks.adapters.runtime`).

May import every other package of ``tasks`` except ``client``; never ``workers``.
"""
