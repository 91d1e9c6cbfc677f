"""Test suite of eventsourcery (a package, so spawned worker processes can import it)."""
