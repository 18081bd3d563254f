"""Who gets an offer: control-group hashing, expected gain and "send nothing".

Every caller (the engine's batch path, the one-customer path, batch scoring offline) asks these
functions, so a customer is held out of the same campaigns everywhere and an offer is made only
when the same gain is positive.

* **Control groups.** ``holdout_draw(customer, campaign, salt)`` maps the triple to a number in
  [0, 1) with BLAKE2b (keyed hashing from the standard library: stable across processes, Python
  versions and machines, unlike ``hash()``). A customer is held out of a campaign when the draw
  is below the campaign's ``holdout_share``, and out of everything when the draw for the
  campaign id ``"*"`` is below the pool's global share. The salt lives in the pool file, so the
  assignment survives restarts, workers and bundle reloads; changing it reshuffles the groups.
* **Expected gain.** With an uplift model: (probability with the offer - probability without it)
  x value - cost. Without one: probability x value - cost. Only a positive gain is an offer.
"""

from __future__ import annotations

import hashlib
import math

#: the campaign id under which the pool-wide holdout is drawn
GLOBAL_HOLDOUT = "*"
#: ranking names reported in every answer
UPLIFT = "uplift"
RESPONSE = "response"
#: why an answer with no campaign is empty
NO_POSITIVE_GAIN = "no campaign has a positive expected gain"
NO_ELIGIBLE = "no campaign is eligible"
ALL_HELD_OUT = "the customer is in the control group of every eligible campaign"

_SCALE = float(1 << 64)


def holdout_draw(customer_id: str, campaign_id: str, salt: str) -> float:
    """A uniform number in [0, 1) fixed by (customer, campaign, salt)."""
    digest = hashlib.blake2b(
        f"{customer_id}\x1f{campaign_id}".encode(), digest_size=8, key=salt.encode()[:64]
    ).digest()
    return int.from_bytes(digest, "big") / _SCALE


def held_out(customer_id: str | None, campaign_id: str, share: float, salt: str) -> bool:
    """True when the customer is in the campaign's control group (never without an id)."""
    if customer_id is None or share <= 0.0:
        return False
    return holdout_draw(customer_id, campaign_id, salt) < share


def expected_gain(p_treated: float, p_control: float | None, value: float, cost: float) -> float:
    """(p_treated - p_control) x value - cost; p_control None means "rank by response"."""
    lift = p_treated if p_control is None else p_treated - p_control
    return lift * value - cost


def is_offer(gain: float) -> bool:
    """An offer is made only when it is expected to earn more than it costs."""
    return gain > 0.0 and not math.isnan(gain)
