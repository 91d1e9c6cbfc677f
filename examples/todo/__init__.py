"""A todo list, event sourced: a Python rendition of envato/event_sourcery_todo_app.

Run it from the repository root with ``python -m examples.todo`` and read
``examples/todo/README.md`` for a walkthrough.
"""

import signal as _signal


def ignore_interrupts(processor) -> None:
    """``ESPRunner(after_fork=...)`` hook: a processor's process ignores SIGINT.

    Ctrl-C in a terminal signals the whole process group; the processors
    should stop when the runner tells them to (SIGTERM), once, rather than
    react to the terminal's SIGINT as well.
    """
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
