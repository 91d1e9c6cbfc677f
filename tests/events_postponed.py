"""Event classes whose annotations are strings (PEP 563), as many applications write them."""

from __future__ import annotations

import datetime
import decimal
import uuid

import eventsourcery as es
from tests.events import Address, Color, Money


class PostponedHappened(es.Event):
    when: datetime.datetime
    day: datetime.date | None
    amount: decimal.Decimal
    ref: uuid.UUID
    color: Color
    address: Address
    tags: tuple[str, ...]
    money: Money | None = None
