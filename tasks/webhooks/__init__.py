"""Webhooks: one signed Standard Webhooks POST to the caller (:mod:`tasks.webhooks.delivery`).

May import ``net``, ``config`` and the leaf modules at the top of ``tasks``.
"""
