"""Settings: every environment variable read once (:mod:`tasks.config.settings`), and the
Celery configuration derived from them (:mod:`tasks.config.celery_config`).

The lowest floor of ``tasks``: it may import only the leaf modules at the top of ``tasks``
(``names``, ``logctx``), the standard library and third-party packages; never ``workers``.
"""
