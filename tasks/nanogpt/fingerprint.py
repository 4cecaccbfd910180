"""The reuse key of a submit: which requests are the same request (TTS_REUSE_TTL).

Two submits share audio when NanoGPT would be asked the same thing: the same model, voice and
every option (``speed``, ``response_format``, ``instructions``, ``stability``,
``similarity_boost``, ``style``: each as validated, so ``1`` and ``1.0`` are one speed, and an
option left out differs from any value given), and the same text once normalised:

* Unicode NFC (a composed ``é`` and ``e`` + combining accent are one text);
* every run of whitespace (``str.isspace``: spaces, tabs, newlines, no-break spaces...) becomes
  one space, and leading and trailing whitespace goes.

Case, punctuation and every other character are kept: they change what is spoken. The key is
HMAC-SHA256 under a fixed namespace (:data:`NAMESPACE`) of that canonical JSON: 64 hex digits,
from which the text cannot be read back; nothing else keeps the text for it. No secret goes in
(the API key is not part of the request), so every worker of a deployment computes the same key.
The worker's own fields (``reuse``, and any other in :attr:`SubmitRequest.LOCAL`) are not part
of it.

The sender's ``tenant`` is: requests are shared only within one tenant (and among jobs that name
none). Another tenant's audio would tell one customer what another asked for, and when; and a
tenant's spend cap would no longer count its own requests.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import unicodedata

from tasks.nanogpt.validation import SubmitRequest

#: The HMAC key: names what is hashed and its version, so a change of the canonical form
#: (another normalisation) makes new keys instead of matching old ones.
NAMESPACE = b"tts-worker/reuse-key/v1"


def normalised_text(text: str) -> str:
    """``text`` in NFC, each run of whitespace one space, none at either end."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def reuse_key(request: SubmitRequest, tenant: str | None = None) -> str:
    """The request's reuse key for ``tenant``'s jobs: 64 hex digits (see the module
    docstring). Without a tenant the key is the one made before tenants existed."""
    doc = {**request.body(), "text": normalised_text(request.text)}
    if tenant is not None:
        doc["tenant"] = tenant
    canonical = json.dumps(doc, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hmac.new(NAMESPACE, canonical.encode("utf-8"), hashlib.sha256).hexdigest()
