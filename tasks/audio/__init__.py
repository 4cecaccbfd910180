"""The audio: fetching it into a store (:mod:`tasks.audio.storage`), the local directory
(:mod:`tasks.audio.audio_store`) and S3 (:mod:`tasks.audio.s3_store`) stores, and deleting old
files (:mod:`tasks.audio.retention`).

May import ``net``, ``config`` and the leaf modules at the top of ``tasks``.
"""
