"""Event classes (and the value types they carry) shared by the tests.

Imported by worker processes too, so it must stay importable on its own.
"""

import dataclasses
import datetime
import decimal
import enum
import uuid
from typing import Optional

import eventsourcery as es

# --- the Ruby shared examples' events -------------------------------------------


class ItemAdded(es.Event):
    title: str


class TestEvent2(es.Event):
    __test__ = False  # not a pytest test class
    my: str = "data"


class UserSignedUp(es.Event):
    email: str = "someone@example.com"


class ItemRejected(es.Event):
    reason: str = "no reason"


class Type1(es.Event):
    pass


class Type2(es.Event):
    pass


class BillingDetailsProvided(es.Event):
    card: str = "4111 1111 1111 1111"


class Numbered(es.Event):
    e: int


class Timed(es.Event):
    time: datetime.datetime


class HTTPRequestMade(es.Event):
    url: str = "https://example.com/"


class DottedName(es.Event, type="dotted.name"):
    value: int = 0


# --- process tests ---------------------------------------------------------------


class CounterIncremented(es.Event):
    worker: int
    seq: int


class RaceStarted(es.Event):
    worker: int


class Appended(es.Event):
    seq: int


# --- value types for the round-trip tests -----------------------------------------


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass(frozen=True)
class Address:
    street: str
    city: str
    postcode: str | None = None


@dataclasses.dataclass(frozen=True)
class Customer:
    name: str
    address: Address
    since: datetime.date
    balance: decimal.Decimal
    previous_address: Address | None = None


class Money:
    """A value type the library does not know: needs es.config.body_serializer.add."""

    def __init__(self, amount: decimal.Decimal, currency: str):
        self.amount = decimal.Decimal(amount)
        self.currency = currency

    def __eq__(self, other):
        return (
            type(other) is Money
            and self.amount == other.amount
            and self.currency == other.currency
        )

    def __hash__(self):
        return hash((self.amount, self.currency))

    def __repr__(self):
        return f"Money({str(self.amount)!r}, {self.currency!r})"


def money_to_json(money: Money) -> str:
    return f"{money.currency} {money.amount}"


def money_from_json(value: str) -> Money:
    currency, amount = value.split(" ")
    return Money(decimal.Decimal(amount), currency)


es.config.body_serializer.add(Money, money_to_json, money_from_json)


class Opaque:
    """Registered nowhere, so it cannot be serialised."""


class OpaqueHappened(es.Event):
    thing: Opaque


class MoneyReceived(es.Event):
    amount: Money
    refund: Money | None = None


class EverythingHappened(es.Event):
    """One field of each annotated type in SPEC section 1."""

    s: str
    i: int
    f: float
    b: bool
    n: None
    l: list[int]  # noqa: E741
    t: tuple[str, ...]
    d: dict[str, int]
    dt: datetime.datetime
    da: datetime.date
    ti: datetime.time
    dec: decimal.Decimal
    u: uuid.UUID
    color: Color
    level: Level
    customer: Customer
    maybe_int: int | None
    maybe_date: Optional[datetime.date]  # noqa: UP045  (typing.Optional on purpose)
    maybe_address: Address | None
    money: Money


def everything(aggregate_id: str, **overrides) -> EverythingHappened:
    fields = dict(
        s="héllo \"wörld\" ✓ \n\t\\",
        i=-(2**70) + 3,
        f=0.1 + 0.2,
        b=True,
        n=None,
        l=[3, 1, 2],
        t=("a", "b"),
        d={"x": 1, "y": -2},
        dt=datetime.datetime(2016, 10, 14, 0, 0, 0, 646191, tzinfo=datetime.timezone.utc),
        da=datetime.date(1999, 12, 31),
        ti=datetime.time(13, 14, 15, 123456),
        dec=decimal.Decimal("12345678901234567890.000000001"),
        u=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        color=Color.BLUE,
        level=Level.HIGH,
        customer=Customer(
            name="Ann",
            address=Address("1 Main St", "Springfield"),
            since=datetime.date(2020, 2, 29),
            balance=decimal.Decimal("-0.05"),
            previous_address=Address("2 Side St", "Shelbyville", "12345"),
        ),
        maybe_int=None,
        maybe_date=datetime.date(2024, 1, 2),
        maybe_address=Address("3 High St", "Capital City"),
        money=Money(decimal.Decimal("12.30"), "EUR"),
    )
    fields.update(overrides)
    return EverythingHappened(aggregate_id=aggregate_id, **fields)
