"""Dispatches events with nameko's own standalone event dispatcher, for the interop
tests (eventfold-amqp's tests/it/nameko_interop.rs).

    python dispatch_events.py <AMQP URI> <count> <instances>

Sends <count> `order__updated` events of service `orders`; event n (0-based) is for
order id n % <instances> and carries that order's running sequence number in "seq".
The standalone dispatcher has no worker context, so it sets no `nameko.*` header itself;
its Publisher takes extra headers, and a call id stack is passed that way, as a service's
dispatcher would send it.
"""
import sys

from nameko.standalone.events import event_dispatcher

uri, count, instances = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dispatch = event_dispatcher(
    {"AMQP_URI": uri},
    headers={"nameko.call_id_stack": ["interop.dispatch.0"]},
)
seq = {}
for n in range(count):
    order_id = n % instances
    seq[order_id] = seq.get(order_id, 0) + 1
    dispatch(
        "orders",
        "order__updated",
        {"id": order_id, "customer": "cust\u00e9 %d" % order_id, "seq": seq[order_id],
         "amount": "%d.50" % n},
    )
print("dispatched", count)
