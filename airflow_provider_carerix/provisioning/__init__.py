"""Converging Carerix onto a spec: plan what differs, apply it, prune what is not declared.

* :mod:`.sync`: ``plan`` / ``apply`` / ``sync`` over the Webhooks Management API (through a hook),
* :mod:`.signing_keys`: the public key Carerix signs each application's deliveries with, recorded in the
  event store for the receiver.
"""
