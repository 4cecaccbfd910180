"""NanoGPT: the caller's request, checked (:mod:`tasks.nanogpt.validation`), the HTTP client
for submit and status (:mod:`tasks.nanogpt.client`), the reading of its answers
(:mod:`tasks.nanogpt.parsing`), and which requests are the same request (the reuse key,
:mod:`tasks.nanogpt.fingerprint`).

May import ``audio`` (inline audio goes straight to the store), ``net``, ``config`` and the
leaf modules at the top of ``tasks``.
"""
