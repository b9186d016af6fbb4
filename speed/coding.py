"""How the speed pipeline's elements are encoded between steps.

Elements are lists (of records, rows or acknowledgements). Typed as plain lists, Beam encodes
them with its FastPrimitivesCoder, which handles a datetime by a pickle call of its own: six calls
per event, most of the runner's cost in a profile of a local replay (docs/benchmarks.md, speed).
Declared as `Records`, a list is pickled whole, in one call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice

from apache_beam import coders


class Records(list):
    """The type hint of a list element of the speed pipeline (steps yield plain lists)."""


coders.registry.register_coder(Records, coders.PickleCoder)


def in_lists(items: Iterable, size: int) -> Iterator[list]:
    """The items as consecutive lists of at most `size` (the sources' batches)."""
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch
