"""A delivery from Carerix as bytes become an event: shared by the receiver and recovery, no web framework.

* :mod:`.payload`: strict parsing of a body into an :class:`~airflow_provider_carerix.definitions.models.EventPayload`
  (``DeliveryRejected`` says which field and why),
* :mod:`.signing`: ``Cx-Signature`` (RSA over the raw body) and the keys provisioning recorded per application.
"""
