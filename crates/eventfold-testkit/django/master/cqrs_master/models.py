from django.db import models

from dj_cqrs.mixins import MasterMixin


def cqrs_meta(obj=None, signal_type=None, **kwargs):
    """The `meta` of every message (CQRS["master"]["meta_function"])."""
    return {"origin": "interop-master", "signal": signal_type}


class Item(MasterMixin, models.Model):
    CQRS_ID = "item"
    # Old values travel as `previous_data`.
    CQRS_TRACKED_FIELDS = ("qty",)

    name = models.CharField(max_length=100)
    qty = models.IntegerField(default=0)
    price = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    description = models.TextField(blank=True, default="")
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "master_item"
