"""Signing deliveries, as Carerix does: one RSA key pair per application, rotated on request.

The public key is served on the application (see :mod:`.management`) and every delivery carries
``Cx-Signature`` (see :mod:`.delivery`). Keys rotate on request (:meth:`SigningMixin.rotate_key`); the
previous key is kept for ``key_retention`` seconds so tests can send with it.
"""

from __future__ import annotations

import base64
import time

from airflow_provider_carerix.emulator.state import EmulatorState, _SigningKey


class SigningMixin(EmulatorState):
    """Key pairs per application: made on first use, rotated by :meth:`rotate_key`, used by :meth:`sign`."""

    def _new_key(self) -> _SigningKey:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        private = rsa.generate_private_key(public_exponent=65537, key_size=self.key_size)
        pem = (
            private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )
        return _SigningKey(private, pem, time.monotonic())

    def _current_key(self, app_id: str) -> _SigningKey:
        # Generated on first use: many tests create applications they never sign for.
        with self._lock:
            keys = self._keys.setdefault(app_id, [])
            if not keys:
                keys.append(self._new_key())
            return keys[-1]

    def public_key(self, application_id: str) -> str:
        """The PEM of the key the application's deliveries are signed with now."""
        return self._current_key(application_id).public_pem

    def previous_public_key(self, application_id: str) -> str | None:
        with self._lock:
            keys = self._keys.get(application_id) or []
            return keys[-2].public_pem if len(keys) > 1 else None

    def rotate_key(self, application_id: str) -> str:
        """Sign with a new key pair from now on; the previous one is kept ``key_retention`` seconds. New PEM."""
        with self._lock:
            if application_id not in self._apps:
                raise KeyError(f"no application {application_id}")
            keys = self._keys.setdefault(application_id, [])
            now = time.monotonic()
            if keys:
                keys[-1].retired_at = now
            keys.append(self._new_key())
            # Keep the current key and the ones still within their retention.
            self._keys[application_id] = [
                k for k in keys if k.retired_at is None or now - k.retired_at < self.key_retention
            ]
            return keys[-1].public_pem

    def sign(self, application_id: str, body: bytes, *, which: str = "current") -> str:
        """``Cx-Signature`` for ``body``: base64 of RSASSA-PKCS1-v1_5 with SHA-256 over the raw bytes."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        if which == "previous":
            with self._lock:
                keys = self._keys.get(application_id) or []
                if len(keys) < 2:
                    raise KeyError(f"application {application_id} has no previous key (rotate first)")
                key = keys[-2]
        else:
            key = self._current_key(application_id)
        signature = key.private_key.sign(body, padding.PKCS1v15(), hashes.SHA256())
        return base64.b64encode(signature).decode("ascii")
