"""Saves and deletes master items through the model (so django-cqrs publishes each one), as
the interop tests ask: `manage.py interop_writes '<json list of operations>'`, each operation
in its own transaction:

- {"create": {"name": ..., "qty": ..., "price": "9.99", "description": ...}}
- {"update": <pk>, "set": {<field>: <value>, ...}}
- {"delete": <pk>}

Prints one JSON line: {"created": [<pk of each create, in order>]}.
"""
import ujson
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from cqrs_master.models import Item
from dj_cqrs.transport import current_transport


class Command(BaseCommand):
    help = "Creates, updates and deletes items through the django-cqrs master model."

    def add_arguments(self, parser):
        parser.add_argument("operations", help="JSON list of operations")

    def handle(self, *args, operations, **options):
        created = []
        for op in ujson.loads(operations):
            with transaction.atomic():
                if "create" in op:
                    created.append(Item.objects.create(**op["create"]).pk)
                elif "update" in op:
                    item = Item.objects.get(pk=op["update"])
                    for field, value in op["set"].items():
                        setattr(item, field, value)
                    item.save()
                elif "delete" in op:
                    Item.objects.get(pk=op["delete"]).delete()
                else:
                    raise CommandError("unknown operation {0!r}".format(op))
        # Publishing happened on commit; close the producer's connection cleanly so every
        # frame has reached the broker before the process exits.
        current_transport.clean_connection()
        self.stdout.write(ujson.dumps({"created": created}))
