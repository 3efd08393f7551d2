"""django-cqrs 3.1.0's RabbitMQTransport, connecting to the vhost of CQRS["url"].

django-cqrs reads only host, port, user and password from the URL
(RabbitMQTransport._parse_url) and builds its pika ConnectionParameters without a
virtual_host, so it always talks to the default vhost "/". The interop tests give every test
a vhost of its own; this module makes the ConnectionParameters django-cqrs builds carry the
URL's vhost. Nothing else of django-cqrs is changed: `RabbitMQTransport` here is django-cqrs's
class itself (settings: CQRS["transport"] = "interop_transport.RabbitMQTransport").
"""
from urllib.parse import unquote, urlparse

import pika
from django.conf import settings
from dj_cqrs.transport import rabbit_mq


class ConnectionParameters(pika.ConnectionParameters):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("virtual_host", unquote(urlparse(settings.CQRS["url"]).path[1:]) or "/")
        super().__init__(*args, **kwargs)


rabbit_mq.ConnectionParameters = ConnectionParameters
RabbitMQTransport = rabbit_mq.RabbitMQTransport
