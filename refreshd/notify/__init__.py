"""Where operators look: webhook notifications ([[notify]]) and dead-man's-switch pings
(each server's ping_url), delivered off the scheduling path.

  hooks.py    `Notifications`: which event goes where, pings on the core's slots
  formats.py  a notification's body: "json" (the event as logged) or "slack"
  sender.py   the bounded queue and its one worker thread: time-outs, retries, drops
"""

from __future__ import annotations

from refreshd.notify.hooks import Notifications
from refreshd.notify.sender import Delivery, Sender

__all__ = ["Delivery", "Notifications", "Sender"]
