"""The real clock."""

from __future__ import annotations

import datetime as dt
import time


class SystemClock:
    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()
