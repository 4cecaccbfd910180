"""The passes each worker's background threads make over waiting jobs: granting the budget's
free tokens to parked jobs (:mod:`tasks.sweeps.granting`, ``workers/poll_releaser.py``),
releasing due parked polls when the budget is off (:mod:`tasks.sweeps.parking`), and re-sending
steps that were lost (:mod:`tasks.sweeps.reconcile`, ``workers/reconciler.py``).

May import ``steps`` and everything below it; not ``adapters`` or ``client``.
"""
