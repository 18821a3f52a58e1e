"""Signed channel URLs: Django's signing for subscriber locations with ``'signed': True``.

A signature is made with :mod:`django.core.signing` (``SECRET_KEY``, salted with
:data:`SALT`; ``SECRET_KEY_FALLBACKS`` are accepted while rotating keys) over the channel id,
so only the Django site can mint one and a guessed channel id gets 403. It travels in the
``sig`` query parameter of the subscriber URL (several channels of one URL: one signature
each, comma-separated, in URL order) or as ``"sig"`` in a WebSocket ``subscribe`` command.

Without ``max_age`` the signature never expires (it is ``Signer``'s). With ``max_age``
seconds it is ``TimestampSigner``'s over the channel id and ``max_age`` together, written
``<max_age>:<timestamp>:<signature>``, and refused once older than ``max_age``: a new
subscribe (a reconnect too) needs a fresh URL, while connections already open stay open.

::

    from pushserver.utils.signing import sign_channel, signed_channel_url

    signed_channel_url("private-42")             # http://push.example/subscriber/private-42?sig=...
    signed_channel_url("private-42", max_age=3600)
    sign_channel("private-42")                  # just the signature, for URLs built in JS
"""

from __future__ import annotations

from urllib.parse import quote

from django.core import signing

from . import updates

SALT = "pushserver.channel"
SEP = ":"


def sign_channel(channel_id: str, max_age: int | None = None) -> str:
    """The signature of ``channel_id`` (valid ``max_age`` seconds, or for ever)."""
    channel_id = str(channel_id)
    if max_age is None:
        return signing.Signer(salt=SALT).signature(channel_id)
    max_age = int(max_age)
    if max_age <= 0:
        raise ValueError(f"max_age must be a positive number of seconds, not {max_age}")
    signed = signing.TimestampSigner(salt=SALT).sign(f"{channel_id}{SEP}{max_age}")
    timestamp, signature = signed.rsplit(SEP, 2)[-2:]
    return f"{max_age}{SEP}{timestamp}{SEP}{signature}"


def verify_channel(channel_id: str, signature: str) -> str | None:
    """None if ``signature`` is valid for ``channel_id`` now, else the short reason it is
    not. The verifier ``runpushserver`` gives the push server."""
    try:
        if SEP not in signature:
            signing.Signer(salt=SALT).unsign(f"{channel_id}{SEP}{signature}")
            return None
        max_age, rest = signature.split(SEP, 1)
        if not max_age.isdigit() or rest.count(SEP) != 1:
            return "malformed signature"
        signing.TimestampSigner(salt=SALT).unsign(
            f"{channel_id}{SEP}{max_age}{SEP}{rest}", max_age=int(max_age)
        )
        return None
    except signing.SignatureExpired:
        return "the signature has expired"
    except signing.BadSignature:
        return "bad signature"


def signed_channel_url(channel_id: str, max_age: int | None = None) -> str:
    """:func:`~pushserver.utils.updates.subscriber_url` with the ``sig`` parameter."""
    url = updates.subscriber_url(str(channel_id))
    signature = quote(sign_channel(str(channel_id), max_age), safe=":")
    return f"{url}{'&' if '?' in url else '?'}sig={signature}"
