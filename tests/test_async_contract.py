"""The store contract (SPEC section 2) through ``es.AsyncEventStore`` (SPEC section 7), on memory,
SQLite and Postgres: the same test functions as tests/test_store_contract.py and
tests/test_bad_input_contract.py (every method, every error), collected here a second time with a
``store`` that is a sync facade over the async layer (tests/async_support.py).

Left out: what the async API does not offer (``transaction()``: a sink awaited from a transaction
block runs on a worker thread, outside it), tests that build their own stores by hand, and the
per-type body round trips (``test_round_trip_of_every_type_in_one_event`` sends every type at once).
"""

from __future__ import annotations

import pytest

from tests import conftest
from tests import test_bad_input_contract as bad_input
from tests import test_store_contract as contract
from tests.async_support import SyncFacade

_LEFT_OUT = {
    "test_transaction_commits_several_sinks_together",
    "test_transaction_rolls_back_every_sink_on_error",
    "test_transaction_rolls_back_on_a_concurrency_error",
    "test_a_caught_inner_failure_rolls_back_only_the_inner_part",
    "test_store_is_a_context_manager",
    "test_open_store_urls",
    "test_sqlite_data_survives_reopening",
    "test_two_sqlite_store_objects_on_one_file_see_each_other",
    "test_subscription_batch_size_defaults_to_1000",
    "test_invalid_event_error_is_a_value_error",
    "test_a_row_written_by_other_means_with_a_naive_time_or_a_non_object_body_is_corrupt",
    "test_round_trip_of_annotated_type",
}

# The contract's tests and fixtures, collected in this module (where ``store`` is the facade).
for _module in (contract, bad_input):
    for _name, _value in vars(_module).items():
        if _name.startswith("test_") and callable(_value) and _name not in _LEFT_OUT:
            globals()[_name] = _value
twenty_one = contract.twenty_one
five_versions = contract.five_versions
one_event = bad_input.one_event


@pytest.fixture(params=list(conftest.STORE_FACTORIES), ids=lambda kind: f"async-{kind}")
def store_kind(request) -> str:
    return request.param


@pytest.fixture
def store_factory(store_kind):
    """conftest's ``store`` and ``make_store`` make the facade over the async layer."""
    make = conftest.STORE_FACTORIES[store_kind]
    return lambda path: SyncFacade(make(path))
