"""HTTP to hosts we do not control: the SSRF-safe session (:mod:`tasks.net.safe_http`) and the
one mapping of HTTP and transport failures to project errors (:mod:`tasks.net.http_errors`).

May import the leaf modules at the top of ``tasks`` and ``config``.
"""
