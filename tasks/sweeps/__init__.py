"""The passes each worker's background threads make over waiting jobs: releasing the jobs
parked in Redis, under the budget's free tokens or unlimited ones with the budget off
(:mod:`tasks.sweeps.granting`, ``workers/poll_releaser.py``), and re-sending steps that were
lost (:mod:`tasks.sweeps.reconcile`, ``workers/reconciler.py``).

May import ``steps`` and everything below it; not ``adapters`` or ``client``.
"""
