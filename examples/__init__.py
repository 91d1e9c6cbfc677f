"""Example applications built on eventsourcery (see examples/todo)."""
