"""A first taste: write events to an SQLite file, read them back, and replay an aggregate.

Run from the repository root:  python examples/quickstart.py
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import eventsourcery as es  # noqa: E402


class AccountOpened(es.Event):
    owner: str


class MoneyDeposited(es.Event):
    amount: int


class Account(es.Aggregate):
    balance = 0
    opened = False

    @es.on(AccountOpened)
    def _opened(self, event: AccountOpened) -> None:
        self.opened = True

    @es.on(MoneyDeposited)
    def _deposited(self, event: MoneyDeposited) -> None:
        self.balance += event.amount

    def open(self, owner: str) -> None:
        if self.opened:
            raise ValueError(f"account {self.id} is already open")
        self.apply_event(AccountOpened, owner=owner)

    def deposit(self, amount: int) -> None:
        if amount <= 0:
            raise ValueError("deposit a positive amount")
        self.apply_event(MoneyDeposited, amount=amount)


def main() -> None:
    path = os.path.join(tempfile.mkdtemp(), "quickstart.db")
    with es.SQLiteEventStore(path) as store:
        repo = es.Repository(store)
        account = repo.load(Account, "acct-1")
        account.open("Ada")
        account.deposit(30)
        account.deposit(12)
        for event in repo.save(account):
            print(f"stored event {event.id}: {event.type} v{event.version} {event.body}")
        again = repo.load(Account, "acct-1")
        print(f"replayed {again.version} events from {path}: balance is {again.balance}")


if __name__ == "__main__":
    main()
