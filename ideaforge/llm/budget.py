"""A spending ledger with an optional cap, shared by every LLM call of one step (one ideation, one idea).

Each call reserves its worst-case cost before it starts and is refused with :class:`BudgetExhausted` when what
is spent plus what calls in flight may still spend has reached the cap, so parallel calls cannot all start
just under it. With ``whole_calls=True`` (the implementer) a call is also refused when its own worst case does
not fit in what is left, so the cap is never overrun. The ledger also records calls that were cancelled (their
tokens are billed all the same).
"""

from __future__ import annotations

import itertools

from ideaforge.llm.errors import BudgetExhausted
from ideaforge.models import Usage


class Budget:
    """``cap_usd=None`` is a plain ledger. ``usage`` is everything charged so far."""

    def __init__(self, cap_usd: float | None = None, whole_calls: bool = False) -> None:
        if cap_usd is not None and cap_usd < 0:
            raise ValueError(f"budget cap must be >= 0 USD, got {cap_usd}")
        self.cap_usd = cap_usd
        self.whole_calls = whole_calls
        self.usage = Usage()
        self._reserved: dict[int, float] = {}
        self._ids = itertools.count()

    @property
    def spent_usd(self) -> float:
        return self.usage.cost_usd

    @property
    def reserved_usd(self) -> float:
        return sum(self._reserved.values())

    @property
    def left_usd(self) -> float | None:
        return None if self.cap_usd is None else max(0.0, self.cap_usd - self.spent_usd)

    def reserve(self, worst_case_usd: float, what: str = "LLM call") -> int:
        """Book a call about to start; raises :class:`BudgetExhausted` if the cap is already reached."""
        committed = self.spent_usd + self.reserved_usd
        if self.cap_usd is not None and (
            committed >= self.cap_usd or (self.whole_calls and committed + worst_case_usd > self.cap_usd)
        ):
            worst = f", this call up to ${worst_case_usd:.4f}" if self.whole_calls else ""
            raise BudgetExhausted(
                f"LLM budget exhausted: {what} refused before it started (spent ${self.spent_usd:.4f}, "
                f"in flight up to ${self.reserved_usd:.4f}{worst}, cap ${self.cap_usd:.4f})"
            )
        ticket = next(self._ids)
        self._reserved[ticket] = max(0.0, worst_case_usd)
        return ticket

    def settle(self, ticket: int | None, usage: Usage | None) -> None:
        """Release a reservation and charge what the call really cost (``None``: nothing was billed)."""
        if ticket is not None:
            self._reserved.pop(ticket, None)
        if usage is not None:
            self.usage = self.usage + usage

    def charge(self, usage: Usage) -> None:
        self.settle(None, usage)
