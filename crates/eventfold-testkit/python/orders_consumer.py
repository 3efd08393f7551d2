"""A nameko service for the interop tests (tests/it/nameko_interop.rs of eventfold-amqp
and eventfold-relay), run with `nameko run --config <yaml> orders_consumer`.

Every event its handlers receive becomes one JSON line in $INTEROP_SINK:
{"type": <event type>, "payload": <the payload as nameko decoded it>,
 "dumped": <json.dumps(payload) with Python's defaults, keys in the order received>}
The test compares "payload" with what DRF renders for the row and "dumped" with the
bytes eventfold published.
"""
import json
import os

from nameko.events import event_handler

_sink = open(os.environ["INTEROP_SINK"], "a", buffering=1)


def _record(event_type, payload):
    line = {"type": event_type, "payload": payload, "dumped": json.dumps(payload)}
    # One write per line (no green-thread switch inside): lines never interleave.
    _sink.write(json.dumps(line, sort_keys=True) + "\n")


class OrdersConsumer:
    name = "orders_consumer"

    @event_handler("orders", "order__created")
    def on_created(self, payload):
        _record("order__created", payload)

    @event_handler("orders", "order__updated")
    def on_updated(self, payload):
        _record("order__updated", payload)

    @event_handler("orders", "order__deleted")
    def on_deleted(self, payload):
        _record("order__deleted", payload)
