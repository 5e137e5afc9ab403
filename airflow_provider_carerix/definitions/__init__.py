"""What a Carerix webhook is, checked locally: no Airflow, no web framework, no I/O beyond reading a file.

* :mod:`.models`: the Management API's objects (applications, webhooks) and a delivered event (``EventPayload``),
* :mod:`.event_types`: the ``entity:action`` catalogue and patterns,
* :mod:`.conditions`: Carerix's condition language (tokenizer, parser, evaluation),
* :mod:`.validation`: one webhook body checked field by field (Carerix checks nothing),
* :mod:`.spec`: spec files (YAML/JSON) with every problem located by line and column,
* :mod:`.redaction`: how URLs and header values are shown without their secrets.
"""
