"""Publishes raw bodies with py-amqp (what kombu runs on), bypassing nameko's
serializer, for the interop tests (eventfold-amqp's tests/it/nameko_interop.rs).

    python publish_raw.py <AMQP URI> <exchange> <routing key> <body>...

Each body is sent as given (UTF-8), content type application/json, persistent,
with publisher confirms.
"""
import sys
from urllib.parse import unquote, urlsplit

import amqp

uri, exchange, routing_key, bodies = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
url = urlsplit(uri)
with amqp.Connection(host="%s:%d" % (url.hostname, url.port or 5672),
                     userid=unquote(url.username or "guest"),
                     password=unquote(url.password or "guest"),
                     virtual_host=unquote(url.path[1:]) or "/",
                     confirm_publish=True) as conn:
    channel = conn.channel()
    for body in bodies:
        channel.basic_publish(
            amqp.Message(body.encode("utf-8"), content_type="application/json",
                         content_encoding="utf-8", delivery_mode=2),
            exchange=exchange, routing_key=routing_key)
print("published", len(bodies))
