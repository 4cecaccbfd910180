"""The job record: a job's states and outcome codes (:mod:`tasks.record.states`) and its hash
in Redis with every atomic transition (:mod:`tasks.record.jobs`).

May import the leaf modules at the top of ``tasks`` (``errors``, ``names``...) and ``config``;
nothing else in ``tasks``.
"""
