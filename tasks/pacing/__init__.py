"""When the next step runs: the poll schedule (:mod:`tasks.pacing.schedule`), its aim at a
job's likely completion (:mod:`tasks.pacing.aim`) from what the fleet learns of NanoGPT's speed
(:mod:`tasks.pacing.learning`, its generation times read from what polls showed by
:mod:`tasks.pacing.censoring`), the value of a poll (:mod:`tasks.pacing.poll_value`), the
fleet's NanoGPT call budget (:mod:`tasks.pacing.budget`), how its calls are shared between
priorities and tenants (:mod:`tasks.pacing.fairness`) and the publishing of a job's next step
(:mod:`tasks.pacing.dispatch`).

May import ``record``, ``config`` and the leaf modules at the top of ``tasks``; not ``steps``
or anything above it.
"""
